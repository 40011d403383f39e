"""Kernel micro-benchmark (``python bench/kernels.py [--quick]``): each Triton kernel of
fastdecode.kernels against its PyTorch reference, eager and ``torch.compile``d, on one GPU.

Times are ``triton.testing.do_bench`` medians (with the 20th and 80th percentiles) in microseconds.
Bandwidth is the minimum traffic of the operation divided by the median time, compared with the
device's measured device-to-device copy bandwidth (bytes read + written by ``dst.copy_(src)``):
- probs: read the logits, write the probabilities (rows * V * (4 + 4) bytes for float32 logits);
- entropy: read the logits;
- verify: read p, q and the exponential noise of each rejected row (every row is rejected here, the
  worst case: drafts are taken where q > p and the uniforms are 1 - 1e-9). RRS reads p and q once per
  rejected draft, so its GB/s counts only the first read.
Results: bench/results/kernels.json and a markdown table on stdout.

``--smoke`` runs every case once at tiny sizes (V = 100 and 4099, rows 1 and 2) without torch.compile: on
a GPU as a dry run, on a CPU in the Triton interpreter with wall-clock timings that mean nothing. It
checks that the script and every case work before GPU time is spent (tests/benchmarks/test_kernels_bench.py).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/<name>.py`: bench.common and this checkout's fastdecode
    sys.path.insert(0, str(ROOT))

from bench.common import script_main  # noqa: E402

DEFAULT_OUT = Path("bench/results/kernels.json")
QUANTILES = [0.5, 0.2, 0.8]


@dataclass
class Row:
    kernel: str
    variant: str
    V: int
    rows: int
    bytes: int
    triton_us: list | None = None     # [median, p20, p80]
    eager_us: list | None = None
    compiled_us: list | None = None
    note: str = ""


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer sizes and variants (about 2 minutes on an H100)")
    parser.add_argument("--vocab", type=int, nargs="*", default=None, help="vocabulary sizes (default 32000 151936)")
    parser.add_argument("--rows", type=int, nargs="*", default=None, help="rows per call (default 1 2 4 8 16 32 64)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd references")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop starting new torch.compile measurements after this many seconds (default 100 with --quick)")
    parser.add_argument("--smoke", action="store_true",
                        help="every case once at tiny sizes (CPU: Triton interpreter, timings meaningless); checks the script")
    parser.add_argument("--out", default=None, help=f"result file (default {DEFAULT_OUT}; with --smoke, not written)")


def copy_bandwidth(nbytes: int = 1 << 29, device: str = "cuda") -> float:
    """Device-to-device copy bandwidth in GB/s, counting bytes read plus bytes written."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src), device, warmup=25, rep=200)[0] / 1e3
    return 2 * nbytes / (ms * 1e-3) / 1e9


def _verify_inputs(rows, V, k, replacement, g):
    dev = g.device
    p = torch.softmax(torch.randn(rows, V, device=dev, generator=g) * 2, -1)
    q = torch.softmax(torch.randn(rows, V, device=dev, generator=g) * 2, -1)
    gap = q - p  # drafts where q > p, uniforms near 1: every draft is rejected
    drafts = gap.topk(k, dim=-1).indices if not replacement else gap.argmax(-1, keepdim=True).expand(rows, k).contiguous()
    u = torch.full((rows, k), 1 - 1e-9, dtype=torch.float64, device=dev)
    e = torch.empty(rows, V, device=dev).exponential_(generator=g)
    return p, q, drafts, u, e


def cases(quick: bool):
    """(kernel, variant, make(rows, V, g) -> (triton_fn, reference, reference_args, bytes), compile?);
    tensors are made on the generator's device."""
    import fastdecode.kernels as K

    # the package attributes ``probs`` / ``entropy`` are the dispatch functions: import the modules
    P, E, VF = (importlib.import_module(f"fastdecode.kernels.{m}") for m in ("probs", "entropy", "verify"))

    def probs_case(t, k, p):
        def make(rows, V, g):
            x = torch.randn(rows, V, device=g.device, generator=g) * 3
            return (lambda: P.probs(x, t, k, p)), K.probs_reference, (x, t, k, p), rows * V * 8
        return make

    def entropy_case(rows, V, g):
        x = torch.randn(rows, V, device=g.device, generator=g) * 3
        return (lambda: E.entropy(x)), K.entropy_reference, (x,), rows * V * 4

    def verify_case(method, k):
        def make(rows, V, g):
            p, q, d, u, e = _verify_inputs(rows, V, k, method != "rrs_without_replacement", g)
            nbytes = rows * V * 12
            if method == "speculative":
                u1 = u[:, 0].contiguous()
                return (lambda: VF.verify_speculative(p, q, d, u1, e), K.verify_speculative_reference,
                        (p, q, d, u1, e), nbytes)
            if method == "kseq":
                rho = torch.full((rows,), 1.5, dtype=torch.float64, device=g.device)
                return (lambda: VF.verify_kseq(p, q, d, u, e, rho), K.verify_kseq_reference, (p, q, d, u, e, rho), nbytes)
            rep = method == "rrs"
            return (lambda: VF.verify_rrs(p, q, d, u, e, rep), K.verify_rrs_reference, (p, q, d, u, e, rep), nbytes)
        return make

    out = [
        ("probs", "T=0.8", probs_case(0.8, 0, 1.0), True),
        ("probs", "T=1 top-k=50 top-p=0.9", probs_case(1.0, 50, 0.9), not quick),
        ("entropy", "bits", entropy_case, True),
        ("verify", "speculative", verify_case("speculative", 1), True),
        ("verify", "kseq k=4", verify_case("kseq", 4), False),
        ("verify", "rrs k=4", verify_case("rrs", 4), False),
    ]
    if not quick:
        out[2:2] = [("probs", "T=1 top-p=0.9", probs_case(1.0, 0, 0.9), True),
                    ("probs", "T=1 top-k=50", probs_case(1.0, 50, 1.0), True),
                    ("probs", "greedy (T=0)", probs_case(0.0, 0, 1.0), False)]
        out.append(("verify", "rrs w/o replacement k=4", verify_case("rrs_without_replacement", 4), False))
    return out


def _bench(fn, device: str = "cuda", warmup: int = 10, rep: int = 40) -> list[float]:
    """[median, p20, p80] microseconds: triton.testing.do_bench on a GPU; on a CPU (smoke runs only)
    three wall-clock calls."""
    fn()  # compile / warm up outside the timing
    if device == "cuda":
        from triton.testing import do_bench

        torch.cuda.synchronize()
        return [1e3 * v for v in do_bench(fn, warmup=warmup, rep=rep, quantiles=QUANTILES)]
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(1e6 * (time.perf_counter() - t0))
    return [statistics.median(times), min(times), max(times)]


def _mismatch(got, want) -> str:
    """'' when the kernel's output agrees with its reference (verify: the same tokens and indices,
    bit for bit; probs / entropy: float32 tolerances), else a note for the table."""
    got, want = (x if isinstance(x, tuple) else (x,) for x in (got, want))
    for a, b in zip(got, want):
        if a.dtype in (torch.int32, torch.int64):
            if not torch.equal(a.cpu(), b.cpu()):
                return "MISMATCH: kernel and reference return different tokens"
        elif not torch.allclose(a.float().cpu(), b.float().cpu(), rtol=1e-4, atol=1e-6):
            return f"MISMATCH: max abs difference {float((a.float() - b.float()).abs().max()):.3g}"
    return ""


def _interpreted_kernels() -> None:
    """Build the kernels for the Triton interpreter (CPU tensors) now: triton.jit reads the variable
    when a kernel is built, on its first use."""
    os.environ["TRITON_INTERPRET"] = "1"
    from triton.runtime.interpreter import InterpretedFunction

    for name in ("probs", "entropy", "verify"):
        m = importlib.import_module(f"fastdecode.kernels.{name}")
        if not isinstance(m._kernel(), InterpretedFunction):  # built earlier in this process for the GPU
            m._kernel.cache_clear()


def _fmt(x):
    return "-" if x is None else f"{x[0]:.1f}"


def markdown(result: dict) -> str:
    bw = result["copy_GBps"]
    lines = [f"Device: {result['device']} (copy bandwidth {bw:.0f} GB/s, read + write). Times: median us.",
             "", "| kernel | variant | V | rows | triton us | GB/s | % copy | eager us | compiled us | x eager | x compiled |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        t = r["triton_us"]
        gbs = r["bytes"] / (t[0] * 1e-6) / 1e9 if t else None
        sp = lambda other: "-" if not (t and other) else f"{other[0] / t[0]:.1f}"  # noqa: E731
        lines.append(f"| {r['kernel']} | {r['variant']} | {r['V']} | {r['rows']} | {_fmt(t)} | "
                     f"{'-' if gbs is None else f'{gbs:.0f}'} | {'-' if gbs is None else f'{100 * gbs / bw:.0f}%'} | "
                     f"{_fmt(r['eager_us'])} | {_fmt(r['compiled_us'])} | {sp(r['eager_us'])} | {sp(r['compiled_us'])} |"
                     + (f" {r['note']}" if r["note"] else ""))
    return "\n".join(lines)


def run(args) -> int:
    smoke = bool(getattr(args, "smoke", False))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not smoke:
        print("bench/kernels.py measures Triton kernels on a CUDA GPU; none is available here, nothing measured.\n"
              "Run it on a GPU machine: python bench/kernels.py --quick\n"
              "(--smoke checks every case here in the Triton interpreter, without meaningful timings)")
        return 0
    from tqdm import tqdm

    if device == "cpu":
        _interpreted_kernels()
    if smoke:
        vocab, rows_list, budget = args.vocab or [100, 4099], args.rows or [1, 2], 0.0
    else:
        vocab = args.vocab or [32000, 151936]
        rows_list = args.rows or ([1, 8, 64] if args.quick else [1, 2, 4, 8, 16, 32, 64])
        budget = args.budget_s if args.budget_s is not None else (100.0 if args.quick else float("inf"))
    t0 = time.time()
    g = torch.Generator(device=device).manual_seed(0)
    bw = copy_bandwidth(1 << 29 if not smoke else 1 << 22, device)
    todo = [(c, V, n) for c in cases(args.quick and not smoke) for V in vocab for n in rows_list]
    compiled = {}
    rows = []
    for (kernel, variant, make, do_compile), V, n in tqdm(todo, desc="kernels", unit="case"):
        row = Row(kernel, variant, V, n, 0)
        rows.append(row)
        try:
            fk, ref, ref_args, row.bytes = make(n, V, g)
            row.note = _mismatch(fk(), ref(*ref_args))
            row.triton_us = _bench(fk, device)
            row.eager_us = _bench(lambda: ref(*ref_args), device)
        except Exception as e:  # keep going: one broken case must not cost the whole GPU run
            row.note = f"failed: {type(e).__name__}: {e}"[:300]
            continue
        if do_compile and not args.no_compile and not smoke:
            if time.time() - t0 > budget:
                row.note = "compiled reference skipped (time budget)"
            else:
                key = (kernel, variant)
                if key not in compiled:  # one compiled reference per case; shapes are dynamic
                    compiled[key] = torch.compile(ref, dynamic=True)
                try:
                    cf = compiled[key]
                    row.compiled_us = _bench(lambda: cf(*ref_args), device)
                except Exception as e:  # a reference torch.compile cannot handle: say so, keep going
                    row.note = f"torch.compile failed: {type(e).__name__}: {e}"[:300]
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or platform.machine()}, Triton interpreter)"
    result = {
        "device": name, "torch": torch.__version__, "triton": importlib.import_module("triton").__version__,
        "python": platform.python_version(), "copy_GBps": bw, "quick": bool(args.quick), "smoke": smoke,
        "seconds": time.time() - t0, "rows": [asdict(r) for r in rows],
    }
    out = Path(args.out) if args.out else (None if smoke else DEFAULT_OUT)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    failed = [r for r in rows if r.note.startswith(("failed", "MISMATCH"))]
    print(f"\n{'smoke run (timings meaningless): ' if smoke else ''}{len(rows)} cases, {len(failed)} failed"
          + (f"; wrote {out}" if out else "") + f" ({result['seconds']:.0f}s)")
    return 1 if failed else 0


def _interpreter_too_late() -> bool:
    """Triton's own library functions (``tl.max``, ...) are built when triton is first imported, for the
    interpreter only if TRITON_INTERPRET=1 was set by then: a process that imported triton before (the
    ``fastdecode kernels`` command: the package imports it) cannot interpret the kernels on the CPU."""
    return (not torch.cuda.is_available() and "triton" in sys.modules
            and os.environ.get("TRITON_INTERPRET") != "1")


def main(argv: list[str] | None = None) -> int:
    if _interpreter_too_late():   # this script again, in a process that imports triton for the interpreter
        import subprocess
        argv = sys.argv[1:] if argv is None else argv
        return subprocess.call([sys.executable, str(Path(__file__).resolve()), *argv],
                               env=dict(os.environ, TRITON_INTERPRET="1"))
    return script_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
