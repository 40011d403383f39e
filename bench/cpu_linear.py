"""The CPU's linear products, MKL against oneDNN-packed weights (``python bench/cpu_linear.py``).

For a few Llama-shaped layer stacks (random float32 weights), the time of every linear product of one
forward, for M rows at once (1 = a plain decode step; 2-16 = a verified draft or a small batch):
``F.linear`` (what torch runs by default, MKL in the CPU wheels) against ``kernels.cpu_linear``'s packed
product. Only the products: the rest of a forward (attention, norms, Python) is the same in both.
Layers are cycled so that the weights come from memory, as in a real forward.
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

from bench.common import RESULTS_DIR, output_path, script_args, script_main, write_json  # noqa: E402

# name -> (hidden, intermediate, key/value width, vocabulary, layers timed)
SHAPES = {"code-pair target (20.9M)": (384, 1024, 128, 8192, 10),
          "Qwen2.5-0.5B-like, 4 of 24 layers + head": (896, 4864, 128, 151936, 4),
          "TinyLlama-1.1B-like, 3 of 22 layers + head": (2048, 5632, 256, 32000, 3)}


def layer_stack(hidden: int, inter: int, kv: int, vocab: int, layers: int) -> list[torch.Tensor]:
    shapes = [(hidden, hidden), (kv, hidden), (kv, hidden), (hidden, hidden), (inter, hidden), (inter, hidden),
              (hidden, inter)]
    g = torch.Generator().manual_seed(0)
    return [torch.randn(o, i, generator=g) for _ in range(layers) for o, i in shapes] + \
        [torch.randn(vocab, hidden, generator=g)]


def time_products(weights: list[torch.Tensor], rows: int, repeats: int) -> tuple[float, float]:
    """Median seconds of all products over ``weights`` for ``rows`` rows: (F.linear, packed)."""
    from fastdecode.kernels.cpu_linear import packed_linears

    layers = [torch.nn.Linear(w.shape[1], w.shape[0], bias=False) for w in weights]
    for layer, w in zip(layers, weights):
        layer.weight.data = w
    xs = {n: torch.randn(rows, n) for n in {w.shape[1] for w in weights}}

    def once() -> float:
        t0 = time.perf_counter()
        for layer in layers:
            layer(xs[layer.in_features])
        return time.perf_counter() - t0

    with torch.inference_mode():
        plain = [once() for _ in range(repeats + 2)][2:]
        with packed_linears(*layers):
            packed = [once() for _ in range(repeats + 2)][2:]
    return statistics.median(plain), statistics.median(packed)


def add_arguments(p) -> None:
    p.add_argument("--rows", default="1,2,4,8,16", help="comma list of M, the rows per product")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="the code pair's shapes only, M = 1, 4, 3 repeats")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/cpu_linear.json)")


def run(args) -> int:
    from bench.common import machine_description
    from fastdecode.kernels.cpu_linear import packing_available

    if not packing_available():
        print("this torch build has no oneDNN linear ops: nothing to compare")
        return 1
    if args.quick:
        args.rows, args.repeats = "1,4", 3
    shapes = dict(list(SHAPES.items())[:1]) if args.quick else SHAPES
    out = output_path(args.out, RESULTS_DIR / "cpu_linear.json", args.quick)
    rows = [int(m) for m in args.rows.split(",")]
    lines = ["| layers | weights | M | F.linear ms | packed ms | speed-up |", "|---|---|---|---|---|---|"]
    results = []
    for name, shape in shapes.items():
        weights = layer_stack(*shape)
        mb = sum(w.numel() for w in weights) * 4 / 1e6
        for m in rows:
            plain, packed = time_products(weights, m, args.repeats)
            results.append(dict(shape=name, weights_mb=mb, rows=m, linear_ms=1e3 * plain, packed_ms=1e3 * packed))
            lines.append(f"| {name} | {mb:.0f} MB | {m} | {1e3 * plain:.1f} | {1e3 * packed:.1f} | "
                         f"{plain / packed:.2f}x |")
            print(lines[-1], flush=True)
    machine = machine_description(torch.device("cpu"))
    table = "\n".join(lines)
    print(f"\n{machine}; median of {args.repeats}\n\n{table}")
    wrote = write_json(out, dict(machine=machine, args=script_args(args), results=results, table=table))
    print(f"\nwrote {wrote}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
