"""HF's logits processors in speculative decoding (``python bench/processors.py``): acceptance and speed with a
repetition penalty, the draft's rows processed as the target's (what ``generate`` does) or left raw, against no
penalty at all (CPU or GPU).

Both variants are lossless (the verification keeps the processed target's law whatever q is); they differ in
how often drafts are accepted. The variants are interleaved within each repeat; alpha is pooled over prompts and
seeds, tokens/s is the median over repeats of each variant's total.
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

RESULT = ROOT / "bench" / "results" / "processors_cpu.json"


def add_arguments(p) -> None:
    from fastdecode.models import DEFAULT_PAIR
    p.add_argument("--pair", default=str(DEFAULT_PAIR), help="folder with target/ and draft/")
    p.add_argument("--penalty", type=float, default=1.2, help="repetition_penalty of the penalised variants")
    p.add_argument("--prompts", type=int, default=6)
    p.add_argument("--prompt-tokens", type=int, default=48)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--draft-length", type=int, default=4)
    p.add_argument("--temperatures", default="0,1")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help=f"JSON result (default {RESULT.relative_to(ROOT)})")
    p.add_argument("--quick", action="store_true", help="2 prompts, 16 tokens, 1 repeat (a smoke run)")


def run(args) -> int:
    import fastdecode
    from bench.common import machine_description, output_path, script_args, stdlib_prompts, write_json
    from fastdecode.decoding import speculative, step

    if args.quick:
        args.prompts, args.new_tokens, args.repeats = 2, 16, 1
    target, draft, tok = fastdecode.load_pair(args.pair, device=args.device)
    prompts = stdlib_prompts(tok, n=args.prompts, prompt_tokens=args.prompt_tokens)
    real = step.draft_tokens

    def raw_q(*a, process=None, **kw):   # the draft's rows left unprocessed
        return real(*a, **kw)

    variants = {"penalty, q processed (generate)": (args.penalty, real), "penalty, q raw": (args.penalty, raw_q),
                "no penalty": (1.0, real)}
    rows = []
    try:
        for T in [float(x) for x in args.temperatures.split(",")]:
            acc = {v: [0, 0] for v in variants}
            rates = {v: [] for v in variants}
            for rep in range(args.repeats):
                for name, (penalty, drafter) in variants.items():
                    speculative.draft_tokens = drafter
                    new, t0 = 0, time.perf_counter()
                    for i, p in enumerate(prompts):
                        out = fastdecode.generate(target, torch.tensor([p], device=args.device), draft=draft,
                                                  temperature=T, max_new_tokens=args.new_tokens, eos_token_id=[],
                                                  draft_length=args.draft_length, adaptive_draft=False,
                                                  repetition_penalty=penalty, seed=i if T > 0 else None)
                        new += out.stats.new_tokens
                        if rep == 0:
                            acc[name][0] += out.stats.accepted_tokens
                            acc[name][1] += out.stats.drafted_tokens
                    rates[name].append(new / (time.perf_counter() - t0))
            for name in variants:
                row = dict(temperature=T, variant=name, alpha=acc[name][0] / max(acc[name][1], 1),
                           tokens_per_s=statistics.median(rates[name]))
                rows.append(row)
                print(f"T={T:g}  {name:32s} alpha {row['alpha']:.3f}  {row['tokens_per_s']:.1f} tok/s")
    finally:
        speculative.draft_tokens = real
    machine = machine_description(target.device)
    print(f"{machine}; {args.prompts} prompts x {args.new_tokens} tokens, gamma {args.draft_length}, "
          f"median of {args.repeats}")
    path = write_json(output_path(args.out, RESULT, args.quick), dict(args=script_args(args), machine=machine, rows=rows))
    print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
