"""Batched speed benchmark (``fastdecode bench-batch`` or ``python bench/batch.py``): total tokens/s of HF
``generate`` (batched, plain), fastdecode autoregressive and fastdecode speculative at each batch size
(``--methods`` adds ``prompt_lookup`` (no draft model) and ``multi_draft`` (``--num-drafts`` drafts), or picks
a subset; ``hf`` is always run, the reference of the speed-ups).

The same N standard-library prompts (N = the largest batch size unless ``--prompts`` says more), cut to
mixed lengths (seeded, between ``--min-prompt-tokens`` and ``--prompt-tokens``), are generated at every
batch size B as N / B left-padded batches. Tokens/s of a repeat = new tokens over all rows (each row
counted up to and including its EOS) / wall time over all batches; the table reports the median over
repeats (methods interleaved within a repeat). Speed-ups are ratios against HF ``generate`` at the same
batch size and temperature, same run.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/<name>.py`: bench.common and this checkout's fastdecode
    sys.path.insert(0, str(ROOT))

from bench.common import RESULTS_DIR, output_path, script_args, script_main, write_json  # noqa: E402

METHODS = ("hf", "autoregressive", "speculative")
ALL_METHODS = METHODS + ("prompt_lookup", "multi_draft")
DRAFTING = ("speculative", "multi_draft")   # the methods that take the draft model


def left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (L - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (L - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def count_new(new: torch.Tensor, eos: set[int]) -> int:
    """Real new tokens of a batch's generated part [B, n]: each row up to and including its first EOS."""
    total = 0
    for row in new.tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        total += cut
    return total


def _run_batch(kind, target, draft, ids, mask, new_tokens, temperature, seed, pad, eos,
               num_drafts: int = 2) -> tuple[int, float]:
    import fastdecode

    t0 = time.perf_counter()
    with torch.inference_mode():
        if kind == "hf":
            kw = dict(max_new_tokens=new_tokens, do_sample=temperature > 0, pad_token_id=pad)
            if temperature > 0:
                kw.update(temperature=temperature, top_k=0, top_p=1.0)
            torch.manual_seed(seed)
            seq = target.generate(ids, attention_mask=mask, **kw)
        else:
            # multi_draft's k; the others: the measured fallback, which the seed would otherwise turn off when sampling
            extra = dict(num_drafts=num_drafts) if kind == "multi_draft" else \
                dict(fallback="measured") if kind in ("speculative", "prompt_lookup") else {}
            seq = fastdecode.generate(target, ids, attention_mask=mask, draft=draft if kind in DRAFTING else None,
                                      method=kind, max_new_tokens=new_tokens, temperature=temperature, seed=seed,
                                      pad_token_id=pad, **extra).sequences
    secs = time.perf_counter() - t0
    return count_new(seq[:, ids.shape[1]:], eos), secs


def run_suite(target, draft, prompts, batch_sizes, temperatures, new_tokens, repeats, pad, eos, progress=True,
              methods=METHODS, num_drafts: int = 2):
    """Methods are interleaved within each repeat (HF, AR, speculative, HF, ...) so that a change in the
    machine's load hits all three alike; the median over repeats is reported."""
    rows = []
    for temp in temperatures:
        for B in batch_sizes:
            groups = [prompts[i : i + B] for i in range(0, len(prompts) - B + 1, B)]
            w_ids, w_mask = left_pad(groups[0], pad)
            for kind in methods:
                _run_batch(kind, target, draft, w_ids, w_mask, 8, temp, 0, pad, eos, num_drafts)   # warm-up
            rates = {kind: [] for kind in methods}
            toks = {}
            for r in range(repeats):
                for kind in methods:
                    n_tok, secs = 0, 0.0
                    for gi, group in enumerate(groups):
                        ids, mask = left_pad(group, pad)
                        n, s = _run_batch(kind, target, draft, ids, mask, new_tokens, temp, 1000 * r + gi, pad, eos,
                                          num_drafts)
                        n_tok += n
                        secs += s
                    rates[kind].append(n_tok / secs)
                    toks[kind] = n_tok
            for kind in methods:
                v = rates[kind]
                rows.append(dict(temperature=temp, batch=B, method=kind, tokens_per_s=statistics.median(v),
                                 tokens_per_s_min=min(v), tokens_per_s_max=max(v), new_tokens=toks[kind],
                                 batches=len(groups)))
                if progress:
                    print(f"T={temp:g} B={B} {kind}: {rows[-1]['tokens_per_s']:.1f} tok/s "
                          f"[{min(v):.1f}, {max(v):.1f}]", flush=True)
    for row in rows:
        base = next(b for b in rows if b["method"] == "hf" and b["batch"] == row["batch"]
                    and b["temperature"] == row["temperature"])
        row["vs_hf"] = row["tokens_per_s"] / base["tokens_per_s"]
    return rows


def crossover(rows, temperature=0.0, method="speculative"):
    """The smallest batch size at which ``method`` is no faster than HF generate (None: faster at every size)."""
    for r in sorted((r for r in rows if r["method"] == method and r["temperature"] == temperature),
                    key=lambda r: r["batch"]):
        if r["vs_hf"] < 1.0:
            return r["batch"]
    return None


def markdown_table(rows) -> str:
    methods = [m for m in ALL_METHODS if any(r["method"] == m for r in rows) and m != "hf"]
    names = {"autoregressive": "fastdecode AR"}
    head = " | ".join(f"{names.get(m, m)} tok/s (vs HF)" for m in methods)
    lines = [f"| T | batch | HF generate tok/s | {head} |",
             "|---|---|---|" + "---|" * len(methods)]
    keys = sorted({(r["temperature"], r["batch"]) for r in rows})
    for t, b in keys:
        get = {r["method"]: r for r in rows if r["temperature"] == t and r["batch"] == b}
        cells = [f"{get[m]['tokens_per_s']:.1f} ({get[m]['vs_hf']:.2f}x)" for m in methods]
        lines.append(f"| {t:g} | {b} | {get['hf']['tokens_per_s']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for t in sorted({r["temperature"] for r in rows}):
        for kind, style in (("autoregressive", "--"), ("speculative", "-"), ("prompt_lookup", "-."),
                            ("multi_draft", "-")):
            pts = sorted((r["batch"], r["vs_hf"], r["tokens_per_s"]) for r in rows
                         if r["method"] == kind and r["temperature"] == t)
            axes[0].plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=f"{kind} T={t:g}")
        for kind, style in (("hf", ":"), ("autoregressive", "--"), ("speculative", "-"), ("prompt_lookup", "-."),
                            ("multi_draft", "-")):
            pts = sorted((r["batch"], r["tokens_per_s"]) for r in rows if r["method"] == kind and r["temperature"] == t)
            axes[1].plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=f"{kind} T={t:g}")
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].set_ylabel("speed-up vs HF generate (same batch size)")
    axes[1].set_ylabel("total tokens/s")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def add_arguments(p) -> None:
    from fastdecode.models import DEFAULT_PAIR
    p.add_argument("--pair", default=str(DEFAULT_PAIR), help="folder with target/ and draft/")
    p.add_argument("--batch", default="1,4,16", help="comma list of batch sizes")
    p.add_argument("--prompts", type=int, default=None, help="prompts in the workload (default: largest batch)")
    p.add_argument("--prompt-tokens", type=int, default=64, help="longest prompt")
    p.add_argument("--min-prompt-tokens", type=int, default=16, help="shortest prompt")
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--temperatures", default="0,1")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma list of {ALL_METHODS} (hf is always added: the reference)")
    p.add_argument("--num-drafts", type=int, default=2, help="k for multi_draft")
    p.add_argument("--quick", action="store_true", help="batch 1,2, 2 prompts, 8 new tokens (smoke test)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/batch.json; the plot next to it)")


def run(args) -> int:
    from bench.common import machine_description, stdlib_prompts
    from fastdecode.models import load_pair

    if args.quick:
        args.batch, args.new_tokens, args.repeats = "1,2", 8, 1
    sizes = [int(b) for b in args.batch.split(",")]
    methods = ["hf"] + [m for m in args.methods.split(",") if m and m != "hf"]
    unknown = sorted(set(methods) - set(ALL_METHODS))
    if unknown:
        raise SystemExit(f"unknown --methods {unknown}; choose from {ALL_METHODS}")
    n = max(max(sizes), args.prompts or 0)
    out = args.out = output_path(args.out, RESULTS_DIR / "batch.json", args.quick)
    target, draft, tok = load_pair(args.pair, args.device)
    rng = random.Random(0)
    prompts = [p[: rng.randint(args.min_prompt_tokens, args.prompt_tokens)]
               for p in stdlib_prompts(tok, n, args.prompt_tokens)]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = target.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    temps = [float(t) for t in args.temperatures.split(",")]
    rows = run_suite(target, draft, prompts, sizes, temps, args.new_tokens, args.repeats, pad, eos,
                     methods=methods, num_drafts=args.num_drafts)
    table = markdown_table(rows)
    machine = machine_description(target.device)
    cross = crossover(rows)
    print(f"\n{n} standard-library prompts of {min(map(len, prompts))}-{max(map(len, prompts))} tokens, "
          f"{args.new_tokens} new tokens, median of {args.repeats} repeat(s), {machine}\n")
    print(table)
    if "speculative" in methods:
        print(f"\ngreedy crossover (speculative no faster than HF generate): "
              f"{'none up to batch ' + str(max(sizes)) if cross is None else 'batch ' + str(cross)}")
    write_json(out, dict(machine=machine, args=script_args(args), prompt_lengths=[len(p) for p in prompts],
                         rows=rows, table=table, greedy_crossover=cross))
    plot(rows, out.with_suffix(".png"))
    print(f"\nwrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
