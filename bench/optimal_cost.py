"""Per-step cost of the OT-optimal verifier (verification/optimal.py) on the CPU and, when present, CUDA.

For each vocabulary size V and number of drafts k it times, on `rows` rows (tree nodes verified at once):
- build:   the race (sort by p/q, cumulative sums, pools, b_real): O(V log V) per row
- select:  the per-draft race (kernels/optimal_select.py): O(k log V) per row
- verify:  single-draft speculative sampling of the selected draft against b_real
- total:   verify_optimal end to end (float64 conversion included): build + select + verify
- other:   the device's other build (the compacted one, with host reads, on CUDA; the fixed-width one on the CPU)
- on CUDA also build_recorded / total_recorded: the fixed-width build replayed from a CUDA graph
  (``build_race(record=True)``), alone and followed by the selection and the verification
and, for scale, a float64 sort of the rows, the classic single-draft verifier, and the two other
lossless verifiers of k i.i.d. drafts, ``rrs`` and ``spectr`` (K-SEQ), each one whole call on the same
rows. Per-row figures (``*_ms_per_row``) divide by ``rows``. CPU numbers are medians of `repeats` wall-clock runs on `threads` threads,
the functions of one (V, k) called in turn within each repeat (``--interleave``, the default: a machine
shared with other jobs then slows them alike; ``--no-interleave`` times each function's repeats in one
block), with the minimum beside the median (``*_ms_min``); CUDA
numbers come from triton.testing.do_bench (median, with 20% / 80% quantiles), where the selection is
timed both as torch ops (the reference) and as the Triton kernel, after checking they agree bit for bit.

Run: ``python bench/optimal_cost.py --quick`` (smoke) or ``python bench/optimal_cost.py`` (full).
Results: bench/results/optimal_cost.json (+ .png).
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

from bench.common import output_path  # noqa: E402

DEFAULT_OUT = Path("bench/results/optimal_cost.json")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--vocab", type=int, nargs="+", default=[8192, 32000, 151936])
    parser.add_argument("--k", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--rows", type=int, default=1, help="rows (tree nodes) verified in one call")
    parser.add_argument("--repeats", type=int, default=30, help="timed repeats per measurement (CPU)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all",
                        help="all: the CPU, plus CUDA when available")
    parser.add_argument("--top-p", type=float, default=1.0,
                        help="truncate p and q to this top-p mass (smaller support -> cheaper race)")
    parser.add_argument("--interleave", action=argparse.BooleanOptionalAction, default=True,
                        help="CPU: call the timed functions in turn within each repeat (default) rather than in blocks")
    parser.add_argument("--check", action="store_true",
                        help="also run a chi-square check of verify_optimal on each device before timing")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: V=8192, k=2,4, few repeats; writes under bench/results/tmp/")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON output, plus a PNG beside it (default {DEFAULT_OUT}; bench/results/tmp/ with --quick)")
    parser.add_argument("--no-plot", action="store_true")


def _pair(rows: int, V: int, top_p: float, device, seed: int = 0):
    """Synthetic target/draft rows: Gaussian logits (scale 2.5), the draft's perturbed by N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, V, generator=g) * 2.5
    p = logits.softmax(-1)
    q = (logits + torch.randn(rows, V, generator=g)).softmax(-1)
    if top_p < 1.0:
        from fastdecode.kernels.probs import probs_reference

        p = probs_reference(logits, 1.0, 0, top_p)
        q = probs_reference(torch.log(q), 1.0, 0, top_p)
    return p.to(device), q.to(device)


def _cpu_interleaved(fns: dict, repeats: int) -> dict:
    """{name: (median ms, min ms)} of ``repeats`` calls of every function, called in turn."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {name: (1e3 * statistics.median(ts), 1e3 * min(ts)) for name, ts in times.items()}


def _cpu_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def _cuda_ms(fn) -> tuple[float, float, float]:
    from triton.testing import do_bench

    med, lo, hi = do_bench(fn, quantiles=[0.5, 0.2, 0.8], warmup=25, rep=100)
    return float(med), float(lo), float(hi)


def _check(device) -> dict:
    """Chi-square of verify_optimal's output against p on 200k rows (V = 6, k = 4; the race needs pools)."""
    from scipy.stats import chi2

    from fastdecode.verification import verify

    p = torch.tensor([0.3, 0.3, 0.15, 0.1, 0.15, 0.0], dtype=torch.float64, device=device)
    q = torch.tensor([0.02, 0.08, 0.3, 0.3, 0.2, 0.1], dtype=torch.float64, device=device)
    N, k = 200_000, 4
    gen = torch.Generator(device=device).manual_seed(0)
    drafts = torch.multinomial(q, N * k, replacement=True, generator=gen).view(N, k)
    res = verify("optimal", p.expand(N, -1), q.expand(N, -1), drafts, gen)
    obs = torch.bincount(res.tokens, minlength=6).double().cpu()
    exp = p.cpu() * N
    keep = exp > 0
    stat = float((((obs - exp) ** 2)[keep] / exp[keep]).sum())
    return {"device": str(device), "chi2_pvalue": float(chi2.sf(stat, int(keep.sum()) - 1)),
            "zero_prob_emitted": int(obs[~keep].sum()), "acceptance": float(res.accepted.double().mean())}


def _measure(device, V: int, k: int, args) -> dict:
    from fastdecode.kernels import triton_available
    from fastdecode.kernels.optimal_select import optimal_select, optimal_select_reference
    from fastdecode.verification.optimal import (build_race, race_select, race_uniforms, speculative_against,
                                        verify_optimal)
    from fastdecode.verification.rrs import verify_rrs
    from fastdecode.verification.spectr import verify_spectr
    from fastdecode.verification.token import verify_speculative

    cuda = device.type == "cuda"
    p, q = _pair(args.rows, V, args.top_p, device)
    gen = torch.Generator(device=device).manual_seed(1)
    drafts = torch.multinomial(q, k, replacement=True, generator=gen)            # [rows, k]
    st = build_race(p, q, k)
    u = race_uniforms(args.rows, k, gen, device)
    sel = race_select(st, drafts, u)
    y = drafts.gather(1, sel[:, None])[:, 0]
    p64 = p.double()
    b_real = st.b_real
    fns = {
        "sort": lambda: torch.sort(p64, dim=-1),
        "build": lambda: build_race(p, q, k),
        # the device's other build: the compacted one (host reads) on CUDA, the fixed-width one on the CPU
        "build_other": lambda: build_race(p, q, k, fixed=not cuda),
        "select": lambda: race_select(st, drafts, u),
        "verify": lambda: speculative_against(st.p, b_real, y, gen),    # (b_real: token order, built once)
        "total": lambda: verify_optimal(p, q, drafts, gen),
        "speculative_k1": lambda: verify_speculative(p, q, drafts[:, :1], gen),
        "rrs": lambda: verify_rrs(p, q, drafts, gen),
        "spectr": lambda: verify_spectr(p, q, drafts, gen),
    }
    if cuda:   # the fixed-width build replayed from a CUDA graph (opt-in in the library: build_race(record=True))
        from fastdecode.verification.optimal import verify_prepared
        try:
            build_race(p, q, k, record=True)
            fns["build_recorded"] = lambda: build_race(p, q, k, record=True)
            fns["total_recorded"] = lambda: verify_prepared(build_race(p, q, k, record=True), drafts, gen)
        except Exception as e:   # report it; the other timings stand
            recorded_error = f"{type(e).__name__}: {e}"
    row = {"device": torch.cuda.get_device_name(device) if cuda else "cpu", "V": V, "k": k, "rows": args.rows,
           "build_other_is": "compacted" if cuda else "fixed-width",
           "support": int(((p > 0) | (q > 0)).sum(-1).max()),
           "alpha_star": float(st.alpha.mean()), "acceptance": float(torch.minimum(st.p, st.b_real).sum(-1).mean())}
    if cuda and "build_recorded" not in fns:
        row["recorded_error"] = recorded_error
    timed = _cpu_interleaved(fns, args.repeats) if not cuda and args.interleave else {}
    for name, fn in fns.items():
        if cuda:
            row[f"{name}_ms"], row[f"{name}_ms_q20"], row[f"{name}_ms_q80"] = _cuda_ms(fn)
        elif name in timed:
            row[f"{name}_ms"], row[f"{name}_ms_min"] = timed[name]
        else:
            row[f"{name}_ms"] = _cpu_ms(fn, args.repeats)
        row[f"{name}_ms_per_row"] = row[f"{name}_ms"] / args.rows
    if cuda and triton_available():
        ranks = st.rank.gather(1, drafts)
        sargs = (st.ell, st.own, st.first, st.last, st.base, st.cum, st.left, st.right, st.xs, st.xd)
        ok = True
        for _ in range(20):                                                      # agree before timing
            uu = race_uniforms(args.rows, k, gen, device)
            ok &= torch.equal(optimal_select(ranks, uu, *sargs), optimal_select_reference(ranks, uu, *sargs))
        row["triton_agrees"] = bool(ok)
        row["select_torch_ms"], _, _ = _cuda_ms(lambda: optimal_select_reference(ranks, u, *sargs))
        row["select_triton_ms"], _, _ = _cuda_ms(lambda: optimal_select(ranks, u, *sargs))
    return row


def _plot(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    devices = sorted({r["device"] for r in rows})
    fig, axes = plt.subplots(1, len(devices), figsize=(6 * len(devices), 4), squeeze=False)
    for ax, dev in zip(axes[0], devices):
        for k in sorted({r["k"] for r in rows}):
            sub = sorted((r for r in rows if r["device"] == dev and r["k"] == k), key=lambda r: r["V"])
            ax.plot([r["V"] for r in sub], [r["total_ms"] for r in sub], "o-", label=f"optimal, k={k}")
        sub = sorted((r for r in rows if r["device"] == dev and r["k"] == rows[0]["k"]), key=lambda r: r["V"])
        ax.plot([r["V"] for r in sub], [r["sort_ms"] for r in sub], "k--", label="float64 sort (floor)")
        ax.plot([r["V"] for r in sub], [r["speculative_k1_ms"] for r in sub], "k:", label="classic, one draft")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("vocabulary size V")
        ax.set_ylabel("ms per verification step")
        ax.set_title(dev)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=120)
    plt.close(fig)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def run(args) -> int:
    import os

    from tqdm import tqdm

    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    args.out = output_path(args.out, DEFAULT_OUT, args.quick)
    if args.quick:
        args.vocab, args.k, args.repeats = [8192], [2, 4], 3
    torch.set_num_threads(args.threads)
    devices = []
    if args.device in ("all", "cpu"):
        devices.append(torch.device("cpu"))
    if args.device in ("all", "cuda"):
        if torch.cuda.is_available():
            devices.append(torch.device("cuda"))
        elif args.device == "cuda":
            raise SystemExit("--device cuda: no CUDA device available")
    checks = [_check(d) for d in devices] if args.check else []
    for c in checks:
        print(f"check on {c['device']}: chi-square p-value {c['chi2_pvalue']:.3g}, "
              f"zero-probability tokens emitted {c['zero_prob_emitted']}, acceptance {c['acceptance']:.4f}")
    jobs = [(d, V, k) for d in devices for V in args.vocab for k in args.k]
    rows = [_measure(d, V, k, args) for d, V, k in tqdm(jobs, desc="optimal cost")]
    head = (f"{'device':>10} {'V':>7} {'k':>2} {'sort':>8} {'build':>8} {'other':>8} {'select':>8} {'verify':>8} "
            f"{'total':>8} {'rrs':>8} {'spectr':>8} {'classic':>8}")
    print(head + "   (ms per call of `rows` rows; other: the other build, compacted on CUDA, fixed-width on the CPU)")
    for r in rows:
        print(f"{r['device'][:10]:>10} {r['V']:>7} {r['k']:>2} {r['sort_ms']:8.3f} {r['build_ms']:8.3f} "
              f"{r['build_other_ms']:8.3f} "
              f"{r['select_ms']:8.3f} {r['verify_ms']:8.3f} {r['total_ms']:8.3f} {r['rrs_ms']:8.3f} "
              f"{r['spectr_ms']:8.3f} {r['speculative_k1_ms']:8.3f}"
              + (f"   select torch {r['select_torch_ms']:.4f} / triton {r['select_triton_ms']:.4f}"
                 f" (agree: {r['triton_agrees']})" if "select_triton_ms" in r else "")
              + (f"   recorded: build {r['build_recorded_ms']:.3f}, total {r['total_recorded_ms']:.3f}"
                 if "build_recorded_ms" in r else f"   recorded: {r['recorded_error'][:80]}"
                 if "recorded_error" in r else ""))
    meta = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "processor": _cpu_name(), "load_average_at_start": load0,
            "threads": args.threads, "rows": args.rows, "repeats": args.repeats, "top_p": args.top_p,
            "interleave": bool(args.interleave),
            "quick": bool(args.quick)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "checks": checks, "results": rows}, indent=2))
    if not args.no_plot:
        _plot(rows, args.out)
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
