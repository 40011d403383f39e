"""End to end: multi_draft with verifier="optimal" vs "rrs" (and "optimal" with every tree node's race
built in one batched call before the walk) on the bundled code pair, on the CPU.

    python bench/optimal_e2e.py [--prompts 3] [--new-tokens 64] [--k 4] [--repeats 3] [--threads 1]

T = 1, draft_length 4 (the default). Each repeat runs every prompt with every variant, the variants
interleaved (the machine may be shared), with the seed of the repeat; tokens/s of a repeat = all new
tokens / all wall time of that variant in that repeat; reported: the median over repeats, and tau
(tokens per target call) over all runs. Results: bench/results/optimal_e2e_cpu.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/<name>.py`: bench.common and this checkout's fastdecode
    sys.path.insert(0, str(ROOT))

import fastdecode  # noqa: E402
from bench.common import stdlib_prompts  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--variants", nargs="+", default=["rrs", "optimal", "optimal_batched"])
    ap.add_argument("--out", type=Path, default=Path("bench/results/optimal_e2e_cpu.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    target, draft, tok = fastdecode.load_pair("models/code-pair")
    prompts = stdlib_prompts(tok, args.prompts, args.prompt_tokens)
    from fastdecode.decoding import multi_draft

    # "optimal": the default on the CPU (one race build per visited node); "optimal_batched": every node's
    # race in one batched call before the walk (the default off the CPU)
    variants = {"rrs": ("rrs", None), "optimal": ("optimal", False), "optimal_batched": ("optimal", True)}
    variants = {n: variants[n] for n in args.variants}
    acc = {v: {"tps": [], "tokens": 0, "target_calls": 0, "runs": []} for v in variants}
    for rep in range(args.repeats):
        per = {v: [0, 0.0] for v in variants}
        for ids in prompts:
            for name, (verifier, batched) in variants.items():
                multi_draft.BATCH_NODES = batched
                t = time.perf_counter()
                out = fastdecode.generate(target, torch.tensor([ids]), draft=draft, method="multi_draft",
                                          num_drafts=args.k, verifier=verifier, temperature=1.0,
                                          max_new_tokens=args.new_tokens, seed=rep)
                dt = time.perf_counter() - t
                per[name][0] += out.stats.new_tokens
                per[name][1] += dt
                acc[name]["tokens"] += out.stats.new_tokens
                acc[name]["target_calls"] += out.stats.target_calls
                acc[name]["runs"].append({"repeat": rep, "new_tokens": out.stats.new_tokens,
                                          "target_calls": out.stats.target_calls, "wall_s": dt})
        for name in variants:
            acc[name]["tps"].append(per[name][0] / per[name][1])
        print(f"repeat {rep}: " + ", ".join(f"{n} {per[n][0] / per[n][1]:.1f} tok/s" for n in variants), flush=True)
    multi_draft.BATCH_NODES = None
    rows = {n: {"tokens_per_s_median": statistics.median(a["tps"]), "tokens_per_s": a["tps"],
                "tau": a["tokens"] / a["target_calls"], "runs": a["runs"]} for n, a in acc.items()}
    for n, r in rows.items():
        print(f"{n:>17}: {r['tokens_per_s_median']:.1f} tok/s (median of {args.repeats}), tau {r['tau']:.3f}")
    ratio = rows["optimal"]["tokens_per_s_median"] / rows["rrs"]["tokens_per_s_median"]
    if "rrs" not in rows or "optimal" not in rows:
        args.out.write_text(json.dumps({"results": rows}, indent=2))
        return 0
    print(f"optimal / rrs tokens/s: {ratio:.3f}; tau optimal {rows['optimal']['tau']:.3f} vs rrs {rows['rrs']['tau']:.3f}")
    meta = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "threads": args.threads, "k": args.k, "new_tokens": args.new_tokens, "prompts": args.prompts,
            "repeats": args.repeats, "temperature": 1.0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows, "optimal_over_rrs": ratio}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
