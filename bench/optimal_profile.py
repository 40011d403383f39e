"""Profile of the optimal verifier's race build (verification/optimal.py) by stage, on the CPU.

    python bench/optimal_profile.py [--vocab 8192 32000 151936] [--k 2 4 8 16] [--threads 1] [--top-p 1.0]

Stages (wall clock, median of --repeats): normalise (float64 copies), support (p > 0 or q > 0 test),
sort (the stable int64-key argsort of the support), optimal_b (suffix sums, W, dW, running max / min),
pools (surplus / deficit compaction, FIFO merge, pool masses, b_real, pool entries) = build - the rest,
and build (build_race end to end). Also a torch.profiler table of build_race at one (V, k) by aten op.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/<name>.py`: bench.common and this checkout's fastdecode
    sys.path.insert(0, str(ROOT))

from bench.optimal_cost import _pair  # noqa: E402
from fastdecode.verification import optimal as O  # noqa: E402


def _ms(fn, repeats):
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocab", type=int, nargs="+", default=[8192, 32000, 151936])
    ap.add_argument("--k", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--table", action="store_true", help="also print the torch.profiler table (V max, k = 4)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'V':>7} {'k':>2} {'support':>7} {'slots':>7} {'normalise':>9} {'support?':>8} {'sort':>7} "
          f"{'optimal_b':>9} {'pools':>7} {'build':>7}   (ms, one row)")
    for V in args.vocab:
        p, q = _pair(1, V, args.top_p, "cpu")
        p64, q64 = O._normalise(p), O._normalise(q)
        nz = (p64 > 0) | (q64 > 0)
        ps_t, qs_t = p64[nz][None], q64[nz][None]
        order = O._argsort_keys(O._sort_key(ps_t, qs_t))
        ps, qs = ps_t.gather(1, order), qs_t.gather(1, order)
        for k in args.k:
            t_norm = _ms(lambda: (O._normalise(p), O._normalise(q)), args.repeats)
            t_sup = _ms(lambda: bool(((p64 > 0) | (q64 > 0)).all()), args.repeats)
            t_sort = _ms(lambda: O._argsort_keys(O._sort_key(ps_t, qs_t)), args.repeats)
            t_b = _ms(lambda: O._optimal_b(ps, qs, k), args.repeats)
            t_build = _ms(lambda: O.build_race(p, q, k), args.repeats)
            st = O.build_race(p, q, k)
            pools = t_build - t_norm - t_sup - t_sort - t_b
            print(f"{V:>7} {k:>2} {ps.shape[1]:>7} {st.slots:>7} {t_norm:9.2f} {t_sup:8.2f} {t_sort:7.2f} "
                  f"{t_b:9.2f} {pools:7.2f} {t_build:7.2f}", flush=True)
    if args.table:
        from torch.profiler import profile

        p, q = _pair(1, max(args.vocab), args.top_p, "cpu")
        O.build_race(p, q, 4)
        with profile() as pr:
            for _ in range(3):
                O.build_race(p, q, 4)
        print(pr.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
