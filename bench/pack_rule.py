"""Packed linear layers' size rule (``python bench/pack_rule.py``): plain decoding of each model of the pair alone
with every layer packed, with the layers under a threshold left unpacked, and with none packed (CPU, float32).

The variants are interleaved within each repeat (the machine's load moves them together); tokens/s median over
repeats, and each variant's ratio to "every layer packed". ``cpu_linear.MIN_PACKED`` is the rule ``generate``
uses; the thresholds here set it for the run.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/<name>.py`: bench.common and this checkout's fastdecode
    sys.path.insert(0, str(ROOT))

from bench.common import script_main  # noqa: E402


def add_arguments(p) -> None:
    from fastdecode.models import DEFAULT_PAIR
    p.add_argument("--pair", default=str(DEFAULT_PAIR), help="folder with target/ and draft/")
    p.add_argument("--thresholds", default="0,40000,100000,150000",
                   help="comma list of MIN_PACKED values (0: every layer packed); 'none' packs nothing")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)


def run(args) -> int:
    import fastdecode
    from bench.common import machine_description
    from fastdecode.kernels import cpu_linear

    target, draft, _ = fastdecode.load_pair(args.pair)
    ids = torch.arange(5, 5 + args.prompt_tokens)[None] % draft.config.vocab_size
    labels = [t.strip() for t in args.thresholds.split(",")] + ["none"]
    kept = cpu_linear.MIN_PACKED
    try:
        for name, model in (("draft", draft), ("target", target)):
            rates = {label: [] for label in labels}
            for _ in range(args.repeats):
                for label in labels:
                    cpu_linear.MIN_PACKED = 1 << 62 if label == "none" else int(label)
                    t0 = time.perf_counter()
                    fastdecode.generate(model, ids, method="autoregressive", max_new_tokens=args.new_tokens,
                                        temperature=0.0, eos_token_id=[])
                    rates[label].append(args.new_tokens / (time.perf_counter() - t0))
            base = statistics.median(rates[labels[0]])
            print(f"{name}: " + ", ".join(f"{label}: {statistics.median(v):.1f} tok/s ({statistics.median(v) / base:.3f}x)"
                                          for label, v in rates.items()))
    finally:
        cpu_linear.MIN_PACKED = kept
    print(f"{machine_description(target.device)}; {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, "
          f"greedy, median of {args.repeats}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
