"""Which defaults suit the static engine on a GPU: the adaptive length with and without its confidence stop,
a shorter cap, fixed lengths, and compile=True (torch.compile) against the recorded CUDA graphs.
(bench/results/gpu_h200/static_tuning.* also holds rows of an earlier variant that decided the stop lazily.) Code pair, 3 stdlib prompts, 128 new tokens, median of 2.

Usage: python bench/static_tuning.py [--device cuda] [--out FILE.json] [--quick]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import fastdecode
from fastdecode.benchmarks.prompts import stdlib_prompts

ST = dict(cache_implementation="static")
CONFIGS = [  # (name, generate kwargs); on CUDA the adaptive length's confidence stop is off unless given
    ("autoregressive", dict(method="autoregressive", **ST)),
    ("adaptive (default)", dict(method="speculative", **ST)),
    ("adaptive, confidence stop 0.4 (a sync per draft token)", dict(method="speculative", confidence_threshold=0.4, **ST)),
    ("adaptive max 8", dict(method="speculative", max_draft_length=8, **ST)),
    ("gamma=3", dict(method="speculative", draft_length=3, adaptive_draft=False, **ST)),
    ("gamma=5", dict(method="speculative", draft_length=5, adaptive_draft=False, **ST)),
    ("gamma=8", dict(method="speculative", draft_length=8, adaptive_draft=False, **ST)),
    ("autoregressive compile=True", dict(method="autoregressive", compile=True, **ST)),
    ("gamma=5 compile=True", dict(method="speculative", draft_length=5, adaptive_draft=False, compile=True, **ST)),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    target, draft, tok = fastdecode.load_pair(device=dev, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32)
    prompts = stdlib_prompts(tok, 1 if args.quick else 3, 64)
    new, repeats = (16, 1) if args.quick else (128, 2)
    rows = []
    for temp in (0.0, 1.0):
        for name, kw in CONFIGS:
            if args.quick and "compile" in name:
                continue
            try:
                t0 = time.perf_counter()
                fastdecode.generate(target, torch.tensor([prompts[0]], device=dev), draft=draft, temperature=temp,
                                    max_new_tokens=new, seed=0, **kw)
                warm = time.perf_counter() - t0
                rates, taus = [], []
                for r in range(repeats):
                    n = secs = calls = 0
                    for i, pr in enumerate(prompts):
                        out = fastdecode.generate(target, torch.tensor([pr], device=dev), draft=draft, temperature=temp,
                                                  max_new_tokens=new, seed=100 * r + i, **kw)
                        n += out.stats.new_tokens
                        secs += out.stats.wall_time_s
                        calls += out.stats.target_calls
                    rates.append(n / secs)
                    taus.append(n / calls)
                rows.append(dict(T=temp, name=name, tokens_per_s=statistics.median(rates), tau=statistics.median(taus),
                                 warmup_s=round(warm, 1)))
            except Exception as e:
                rows.append(dict(T=temp, name=name, error=f"{type(e).__name__}: {e}"))
            r = rows[-1]
            print(f"T={temp:g} {name}: " + (f"{r['tokens_per_s']:.1f} tok/s, tau {r['tau']:.2f}, warm-up {r['warmup_s']} s"
                                             if "error" not in r else r["error"]), flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(machine=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU",
                                                  rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
