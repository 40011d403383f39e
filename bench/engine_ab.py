"""Interleaved A/B of the engines against Hugging Face (``python bench/engine_ab.py 0``).

The suites of ``bench/e2e.py`` run one configuration after another, so a slow phase of a shared machine
lands on whichever configuration runs then. Here every repeat runs every variant once over the same
standard-library prompts, in an order reversed every other repeat, and the ratios are paired: for each
repeat, variant / baseline, then the median over repeats (with the [min, max] of those ratios).

Variants: HF ``generate`` and HF assisted generation (the baselines), fastdecode autoregressive and adaptive
speculative decoding on the dynamic and the static engine, and on the CPU the same two without
oneDNN-packed linear layers (``pack_weights=False``). No seed for fastdecode (so that the measured fallback
is what runs, as for a user who does not seed). ``--lambda-window W``: every fastdecode variant runs under
Lambda attention (window W, 4 globals), and multi-draft decoding (k = 2, depth 3, rrs) joins on both engines
(the HF rows stay plain attention: a speed reference only, not the same output).
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

STATIC = dict(cache_implementation="static")


def variants(device_type: str, lambda_window: int = 0) -> dict[str, tuple[str, dict]]:
    """name -> (kind, fastdecode keyword arguments); kind "hf", "hf_assisted" or "fastdecode"."""
    out = {"HF generate": ("hf", {}), "HF assisted": ("hf_assisted", {}),
           "autoregressive": ("fastdecode", dict(method="autoregressive")),
           "autoregressive static": ("fastdecode", dict(method="autoregressive", **STATIC)),
           "speculative": ("fastdecode", dict(method="speculative")),
           "speculative static": ("fastdecode", dict(method="speculative", **STATIC))}
    if device_type == "cpu":
        out["autoregressive, unpacked"] = ("fastdecode", dict(method="autoregressive", pack_weights=False))
        out["speculative, unpacked"] = ("fastdecode", dict(method="speculative", pack_weights=False))
    if lambda_window:
        from fastdecode import LambdaAttention

        tree = dict(method="multi_draft", num_drafts=2, draft_length=3, verifier="rrs")
        out["multi_draft"] = ("fastdecode", tree)
        out["multi_draft static"] = ("fastdecode", dict(tree, **STATIC))
        lam = LambdaAttention(window=lambda_window, num_global=4, max_rollback=16)
        out = {name: (kind, dict(kw, lambda_attention=lam) if kind == "fastdecode" else kw)
               for name, (kind, kw) in out.items()}
    return out


# (variant, baseline) pairs reported as paired ratios
PAIRS = [("speculative", "HF assisted"), ("speculative static", "HF assisted"), ("speculative", "HF generate"),
         ("autoregressive", "HF generate"), ("autoregressive static", "autoregressive"),
         ("speculative static", "speculative"), ("speculative", "autoregressive"),
         ("speculative, unpacked", "HF assisted"), ("autoregressive", "autoregressive, unpacked"),
         ("speculative", "speculative, unpacked"), ("multi_draft static", "multi_draft"),
         ("multi_draft", "autoregressive"), ("multi_draft static", "autoregressive static")]


def run_variant(kind: str, kw: dict, target, draft, prompts, new_tokens: int, temperature: float) -> int:
    """New tokens over all prompts."""
    import fastdecode

    n = 0
    for p in prompts:
        ids = torch.tensor([p], device=target.device)
        if kind == "fastdecode":
            out = fastdecode.generate(target, ids, draft=draft if kw["method"] != "autoregressive" else None,
                                      max_new_tokens=new_tokens, temperature=temperature, **kw)
            n += out.stats.new_tokens
            continue
        hf = dict(max_new_tokens=new_tokens, do_sample=temperature > 0, attention_mask=torch.ones_like(ids))
        if temperature > 0:
            hf.update(temperature=temperature, top_k=0, top_p=1.0)
        if kind == "hf_assisted":
            hf["assistant_model"] = draft
        with torch.inference_mode():
            n += target.generate(ids, **hf).shape[1] - ids.shape[1]
    return n


def add_arguments(p) -> None:
    from fastdecode.models import DEFAULT_PAIR
    p.add_argument("temperature", type=float)
    p.add_argument("--pair", default=str(DEFAULT_PAIR), help="folder with target/ and draft/")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lambda-window", type=int, default=0,
                   help="run fastdecode under Lambda attention with this window (and add multi_draft rows); 0: off")
    p.add_argument("--quick", action="store_true", help="1 prompt, 8 new tokens, 2 repeats (smoke test)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/engine_ab_T<temperature>.json)")


def run(args) -> int:
    from tqdm.auto import tqdm

    from bench.common import machine_description, stdlib_prompts
    from fastdecode.models import load_pair

    if args.quick:
        args.prompts, args.new_tokens, args.repeats = 1, 8, 2
    lam = f"_lambda{args.lambda_window}" if args.lambda_window else ""
    out = output_path(args.out, RESULTS_DIR / f"engine_ab_T{args.temperature:g}{lam}.json", args.quick)
    target, draft, tok = load_pair(args.pair, args.device)
    prompts = stdlib_prompts(tok, args.prompts, 64)
    table = variants(target.device.type, args.lambda_window)
    names = list(table)
    common = (target, draft, prompts, args.new_tokens, args.temperature)
    for name in names:  # warm-up (allocations, and the measured fallback's first timings)
        run_variant(*table[name], *common)
    rates = {v: [] for v in names}
    for r in tqdm(range(args.repeats), desc="repeats"):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            n = run_variant(*table[name], *common)
            rates[name].append(n / (time.perf_counter() - t0))
    machine = machine_description(target.device)
    print(f"\n{machine}; T = {args.temperature:g}, {args.prompts} prompts x {args.new_tokens} new tokens, "
          f"{args.repeats} interleaved repeats" + (f", Lambda window {args.lambda_window}" if lam else "") + "\n")
    lines = ["| variant | tok/s (median [min, max]) |", "|---|---|"]
    lines += [f"| {v} | {statistics.median(x):.1f} [{min(x):.1f}, {max(x):.1f}] |" for v, x in rates.items()]
    ratios = {}
    lines += ["", "| paired ratio | median [min, max] over repeats |", "|---|---|"]
    for a, b in PAIRS:
        if a in rates and b in rates:
            rs = [x / y for x, y in zip(rates[a], rates[b])]
            ratios[f"{a} / {b}"] = rs
            lines.append(f"| {a} / {b} | {statistics.median(rs):.2f}x [{min(rs):.2f}, {max(rs):.2f}] |")
    text = "\n".join(lines)
    print(text)
    wrote = write_json(out, dict(machine=machine, args=script_args(args), rates=rates, paired_ratios=ratios,
                                 table=text))
    print(f"\nwrote {wrote}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
