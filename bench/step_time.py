"""Where a static-engine decode step's time goes: the device's time per recorded forward against the host's.

For each model (the code pair's target, and the 1.1B Llama shape of ``bench/bandwidth_floor.py``) and each
recording mode (CUDA graphs of the eager forward; ``torch.compile`` = inductor + CUDA graphs), greedy,
one token per forward, on the static engine's runner (``decoding.static_cache``):

- ``serial``: one forward, its argmax, one host read of the token per step (what plain decoding does now);
- ``queued``: the same steps with no host read in between (the host queues them; a step then costs
  max(host time, device time));
- ``host``: the host's time to queue a step (measured before the closing sync of ``queued``);
- ``replay``: the device's time per forward alone (back-to-back replays of the recorded forward, CUDA events);
- ``kernels``: the device kernels one plain (eager) forward launches, and their summed device time
  (torch.profiler);
- ``breakdown`` (CUDA): the kernels of the recorded forward itself (the profiler sees inside a graph replay),
  grouped as matrix products, attention, inductor's fused kernels, copies and the rest: per forward, their
  count and device ms, the matrix products' implied weight-read bandwidth, and the ten costliest kernels.

Usage: python bench/step_time.py [--models pair,1b] [--modes cudagraphs,inductor[,inductor-tuned,inductor-frozen]] [--steps 64] [--out FILE.json]
(--smoke: the tiny shape on the CPU, eager and inductor by default, for a check of the script itself).
"""
from __future__ import annotations

import contextlib
import re
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import machine_description, script_args, script_main, write_json  # noqa: E402


def _model(name: str, device, smoke: bool):
    from bench.bandwidth_floor import build
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if name == "1b":
        return build(device, dtype, smoke)
    import fastdecode
    target, _, _ = fastdecode.load_pair(device=device, dtype=dtype)
    return target


def _kernels(model, ids) -> tuple[int, float]:
    """CUDA kernels launched by one plain forward of ``ids`` [1, 1] after a cache of 32 tokens, and their device ms."""
    from torch.profiler import ProfilerActivity, profile
    from transformers import DynamicCache
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(ids.repeat(1, 32), past_key_values=cache, use_cache=True)
        model(ids, past_key_values=cache, use_cache=True)   # warm
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(ids, past_key_values=cache, use_cache=True)
            torch.cuda.synchronize()
    evs = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return len(evs), sum(e.device_time for e in evs) / 1e3


KINDS = (("matmul", re.compile(r"gemm|gemv|cutlass|nvjet|cublas|xmma|splitk|sm90_|sm80_", re.I)),
         ("attention", re.compile(r"flash|fmha|attention|attn|sdpa", re.I)),
         ("fused (inductor)", re.compile(r"^triton_")),
         ("copy / fill", re.compile(r"copy|fill|memcpy|memset", re.I)))


def kind_of(name: str) -> str:
    """The group of a CUDA kernel by its name (first match in ``KINDS``; else "other")."""
    return next((kind for kind, pat in KINDS if pat.search(name)), "other")


def breakdown(kernels: list[tuple[str, float]], forwards: int, weight_bytes: int) -> dict:
    """Group profiled kernels [(name, device us)] of ``forwards`` forwards: per forward, each group's kernel
    count and device ms; the matrix products' weight bytes per second (every weight read once per forward, as
    in a batch-1 decode step); and the ten costliest kernel names with their ms per forward."""
    groups: dict[str, dict] = {}
    by_name: dict[str, float] = {}
    for name, us in kernels:
        g = groups.setdefault(kind_of(name), dict(kernels=0, ms=0.0))
        g["kernels"] += 1 / forwards
        g["ms"] += us / 1e3 / forwards
        by_name[name] = by_name.get(name, 0.0) + us / 1e3 / forwards
    out = dict(groups=groups, ms=sum(g["ms"] for g in groups.values()),
               top=sorted(by_name.items(), key=lambda kv: -kv[1])[:10])
    if groups.get("matmul", {}).get("ms"):
        out["matmul_bytes_per_s"] = weight_bytes / (groups["matmul"]["ms"] / 1e3)
    return out


def _profile_forwards(run, tok, start: int, n: int) -> list[tuple[str, float]]:
    """[(kernel name, device us)] of n recorded forwards of the runner (graph replays included)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(n):
            tok = run.forward(tok.view(1, 1), start + i).argmax(-1)
        torch.cuda.synchronize()
    return [(e.name, e.device_time) for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


# inductor modes with config patched in: "inductor-tuned", the config gpt-fast compiles under (its fused
# kernels' launch parameters searched, a longer compile); "inductor-frozen", the weights taken for constants
# (freezing: the products that share an input, q/k/v and gate/up, concatenated into one each; on the CPU
# also the weights packed for oneDNN; a concatenated copy of those weights is kept besides the model's own)
PATCHES = {"tuned": dict(coordinate_descent_tuning=True),
           "frozen": {"freezing": True, "cpp.enable_concat_linear": True}}


def measure(model, mode: str, steps: int, repeats: int) -> dict:
    """The timings of one recording mode: "eager", "cudagraphs", "inductor", "inductor-tuned" or
    "inductor-frozen" (inductor with its :data:`PATCHES` entry patched into its config)."""
    from fastdecode.decoding.static_cache import StaticRunner, compile_limits
    import torch._inductor.config as inductor_config
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    base, _, patch = mode.partition("-")
    run = StaticRunner(model, 128 * (1 + (32 + steps * 3) // 128), base)
    prompt = torch.randint(0, model.config.vocab_size, (1, 32), generator=torch.Generator().manual_seed(0)).to(device)
    out = dict(mode=mode)
    tuning = inductor_config.patch(PATCHES[patch]) if patch else contextlib.nullcontext()
    with torch.inference_mode(), compile_limits(), tuning:
        t0 = time.perf_counter()
        tok = run.prefill(prompt).argmax(-1)
        for i in range(3):   # record / compile, warm
            tok = run.forward(tok.view(1, 1), 32 + i).argmax(-1)
        sync()
        out["warmup_s"] = time.perf_counter() - t0
        serial, queued, host = [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(steps):
                tok = run.forward(tok.view(1, 1), 32 + i).argmax(-1)
                tok.item()
            serial.append((time.perf_counter() - t0) / steps)
            sync()
            t0 = time.perf_counter()
            for i in range(steps):
                tok = run.forward(tok.view(1, 1), 32 + steps + i).argmax(-1)
            host.append((time.perf_counter() - t0) / steps)
            sync()
            queued.append((time.perf_counter() - t0) / steps)
        out.update(serial_ms=1e3 * statistics.median(serial), queued_ms=1e3 * statistics.median(queued),
                   host_ms=1e3 * statistics.median(host))
        if cuda and mode == "cudagraphs":
            g = next(iter(v for k, v in run.graphs.items() if k[0] == "chain"))[0]
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            g.replay()
            start.record()
            for _ in range(steps):
                g.replay()
            end.record()
            sync()
            out["replay_ms"] = start.elapsed_time(end) / steps
        if cuda:
            weights = sum(p.numel() * p.element_size() for p in model.parameters())
            try:   # the timings above stand whatever happens here
                out["breakdown"] = breakdown(_profile_forwards(run, tok, 32 + 2 * steps, 8), 8, weights)
            except Exception as e:
                out["breakdown_error"] = f"{type(e).__name__}: {e}"
    return out


def run(args) -> int:
    device = torch.device(args.device)
    default = ("eager", "inductor") if args.smoke else ("cudagraphs", "inductor")
    modes = tuple(args.modes.split(",")) if args.modes else default
    rows = []
    for name in args.models.split(","):
        model = _model(name, device, args.smoke)
        info = dict(model=name, params=sum(p.numel() for p in model.parameters()),
                    weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()))
        if device.type == "cuda":
            ids = torch.tensor([[5]], device=device)
            info["kernels_per_forward"], info["kernel_ms_per_forward"] = _kernels(model, ids)
            print(f"{name}: {info['kernels_per_forward']} kernels per plain forward, "
                  f"{info['kernel_ms_per_forward']:.3f} ms of device time", flush=True)
        for mode in modes:
            try:
                r = dict(info, **measure(model, mode, args.steps, args.repeats))
            except Exception as e:  # report and go on
                r = dict(info, mode=mode, error=f"{type(e).__name__}: {e}")
            rows.append(r)
            if args.out:   # after every row: a step cut short by its time limit keeps what it measured
                write_json(args.out, dict(machine=machine_description(device), args=script_args(args), rows=rows))
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"\n{machine_description(device)}, greedy, one token per forward, median of {args.repeats} x {args.steps} steps\n")
    print("| model | mode | serial ms/step | queued ms/step | host ms/step | replay ms (device) | warm-up s |")
    print("|---|---|---|---|---|---|---|")
    f = lambda r, k: f"{r[k]:.3f}" if k in r else "-"  # noqa: E731
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['mode']} | failed: {r['error'][:80]} |")
            continue
        print(f"| {r['model']} | {r['mode']} | {f(r, 'serial_ms')} | {f(r, 'queued_ms')} | {f(r, 'host_ms')} | "
              f"{f(r, 'replay_ms')} | {r['warmup_s']:.1f} |")
    for r in rows:
        if "breakdown" in r:
            b = r["breakdown"]
            bw = f", matrix products read the weights at {b['matmul_bytes_per_s'] / 1e12:.2f} TB/s" \
                if "matmul_bytes_per_s" in b else ""
            print(f"\n{r['model']}, {r['mode']}: {b['ms']:.3f} ms of kernels per forward{bw}")
            print("| group | kernels / forward | ms / forward |\n|---|---|---|")
            for kind, g in sorted(b["groups"].items(), key=lambda kv: -kv[1]["ms"]):
                print(f"| {kind} | {g['kernels']:.0f} | {g['ms']:.3f} |")
            for name, ms in b["top"]:
                print(f"  {ms:.4f} ms  {name[:110]}")
    if args.out:
        write_json(args.out, dict(machine=machine_description(device), args=script_args(args), rows=rows))
    return 0


def add_arguments(p) -> None:
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", default="pair,1b")
    p.add_argument("--modes", default=None, help="default: cudagraphs,inductor (--smoke: eager,inductor)")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=None)


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
