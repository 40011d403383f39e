"""Speculative decoding under each fallback against plain decoding (``python bench/fallback_ab.py``).

One engine, one temperature, no seed (so that sampling keeps the measured fallback): tokens/s of fastdecode's
autoregressive loop and of adaptive speculative decoding with ``fallback="off"``, ``"estimated"`` and
``"measured"``, on standard-library prompts, the variants interleaved (their order reversed every other
repeat), median over repeats; with the plain steps and target calls of each variant's last repeat.
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

VARIANTS = ("autoregressive", "off", "estimated", "measured")


def run_variant(variant, target, draft, prompts, new_tokens, temperature, engine) -> tuple[int, int, int]:
    """(new tokens, plain steps, target calls) over all prompts."""
    import fastdecode

    n = plain = calls = 0
    for p in prompts:
        ids = torch.tensor([p], device=target.device)
        kw = dict(max_new_tokens=new_tokens, temperature=temperature, cache_implementation=engine)
        if variant == "autoregressive":
            out = fastdecode.generate(target, ids, method="autoregressive", **kw)
        else:
            out = fastdecode.generate(target, ids, draft=draft, method="speculative", fallback=variant, **kw)
        n += out.stats.new_tokens
        plain += out.stats.extra.get("plain_steps", 0)
        calls += out.stats.target_calls
    return n, plain, calls


def add_arguments(p) -> None:
    from fastdecode.models import DEFAULT_PAIR
    p.add_argument("temperature", type=float)
    p.add_argument("engine", nargs="?", default="dynamic", choices=["dynamic", "static"])
    p.add_argument("--pair", default=str(DEFAULT_PAIR), help="folder with target/ and draft/")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")


def run(args) -> int:
    from bench.common import machine_description, stdlib_prompts
    from fastdecode.models import load_pair

    target, draft, tok = load_pair(args.pair, args.device)
    prompts = stdlib_prompts(tok, args.prompts, 64)
    common = (target, draft, prompts, args.new_tokens, args.temperature, args.engine)
    for v in VARIANTS:  # warm-up (and the measured fallback's first timings)
        run_variant(v, *common)
    rates, last = {v: [] for v in VARIANTS}, {}
    for r in range(args.repeats):
        for v in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
            t0 = time.perf_counter()
            n, plain, calls = run_variant(v, *common)
            rates[v].append(n / (time.perf_counter() - t0))
            last[v] = (plain, calls)
    print(f"{machine_description(target.device)}; T = {args.temperature:g}, {args.engine} engine, "
          f"{args.prompts} prompts x {args.new_tokens} new tokens, median of {args.repeats}")
    for v in VARIANTS:
        print(f"{v:>15}: {statistics.median(rates[v]):6.1f} tok/s  [{min(rates[v]):.1f}, {max(rates[v]):.1f}]  "
              f"plain steps / target calls {last[v][0]} / {last[v][1]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
