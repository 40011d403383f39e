"""Which defaults suit the static engine on a GPU: the adaptive length with and without its confidence stop,
a shorter cap, fixed lengths, and compile=True (torch.compile) against the recorded CUDA graphs.
(bench/results/gpu_h200/static_tuning.* also holds rows of an earlier variant that decided the stop lazily.) Code pair, 3 stdlib prompts, 128 new tokens, median of 2.

Usage: python bench/static_tuning.py [--device cuda] [--out FILE.json] [--quick]
"""
from __future__ import annotations

import argparse
import json
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

ST = dict(cache_implementation="static")
CONFIGS = [  # (name, generate kwargs); on CUDA the adaptive length's confidence stop is off unless given
    ("HF static + compile", dict(hf=True, cache_implementation="static")),  # transformers compiles it on CUDA
    ("autoregressive", dict(method="autoregressive", **ST)),
    ("adaptive (default)", dict(method="speculative", **ST)),
    ("adaptive, confidence stop 0.4 (a sync per draft token)", dict(method="speculative", confidence_threshold=0.4, **ST)),
    ("adaptive max 8", dict(method="speculative", max_draft_length=8, **ST)),
    ("gamma=3", dict(method="speculative", draft_length=3, adaptive_draft=False, **ST)),
    ("gamma=5", dict(method="speculative", draft_length=5, adaptive_draft=False, **ST)),
    ("gamma=8", dict(method="speculative", draft_length=8, adaptive_draft=False, **ST)),
    ("prompt_lookup", dict(method="prompt_lookup", **ST)),  # no draft model: n-gram drafts from the text
    ("autoregressive compile=True", dict(method="autoregressive", compile=True, **ST)),
    ("gamma=5 compile=True", dict(method="speculative", draft_length=5, adaptive_draft=False, compile=True, **ST)),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=None, help="comma list of configuration names to run (default: all)")
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    target, draft, tok = fastdecode.load_pair(device=dev, dtype=torch.bfloat16 if dev.type == "cuda" else torch.float32)
    prompts = stdlib_prompts(tok, 1 if args.quick else args.prompts, 64)
    new, repeats = (16, 1) if args.quick else (128, args.repeats)
    only = args.only.split(",") if args.only else None
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def run_one(kw, ids, temp, seed):
        """(new tokens, seconds, target calls)"""
        if kw.get("hf"):
            gen = dict(max_new_tokens=new, do_sample=temp > 0, cache_implementation=kw["cache_implementation"])
            if temp > 0:
                gen.update(temperature=temp, top_k=0, top_p=1.0)
            torch.manual_seed(seed)
            sync()
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = target.generate(ids, **gen)
            sync()
            n = out.shape[1] - ids.shape[1]
            return n, time.perf_counter() - t0, n
        d = None if kw.get("method") == "prompt_lookup" else draft
        out = fastdecode.generate(target, ids, draft=d, temperature=temp, max_new_tokens=new, seed=seed, **kw)
        return out.stats.new_tokens, out.stats.wall_time_s, out.stats.target_calls
    rows = []
    for temp in (0.0, 1.0):
        for name, kw in CONFIGS:
            if (args.quick and "compile" in name) or (only and name not in only):
                continue
            try:
                t0 = time.perf_counter()
                run_one(kw, torch.tensor([prompts[0]], device=dev), temp, 0)
                warm = time.perf_counter() - t0
                rates, taus = [], []
                for r in range(repeats):
                    n = secs = calls = 0
                    for i, pr in enumerate(prompts):
                        a, b, c = run_one(kw, torch.tensor([pr], device=dev), temp, 100 * r + i)
                        n += a
                        secs += b
                        calls += c
                    rates.append(n / secs)
                    taus.append(n / calls)
                rows.append(dict(T=temp, name=name, tokens_per_s=statistics.median(rates), tau=statistics.median(taus),
                                 warmup_s=round(warm, 1)))
            except Exception as e:
                rows.append(dict(T=temp, name=name, error=f"{type(e).__name__}: {e}"))
            r = rows[-1]
            print(f"T={temp:g} {name}: " + (f"{r['tokens_per_s']:.1f} tok/s, tau {r['tau']:.2f}, warm-up {r['warmup_s']} s"
                                             if "error" not in r else r["error"]), flush=True)
    base = {r["T"]: r["tokens_per_s"] for r in rows if r["name"].startswith("HF") and "error" not in r}
    for r in rows:
        if r["T"] in base and "error" not in r:
            r["vs_hf_static"] = r["tokens_per_s"] / base[r["T"]]
            print(f"T={r['T']:g} {r['name']}: {r['vs_hf_static']:.2f}x HF static" + (" + compile" if dev.type == "cuda" else ""))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(dict(machine=torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU",
                                                  rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
