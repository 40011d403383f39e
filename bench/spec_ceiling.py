"""What chain speculation can gain on this machine, under i.i.d. acceptance (``fastdecode spec-ceiling`` or
``python bench/spec_ceiling.py``).

Measured here, in one run: the target's forward time t_T(n) for n = 1 .. gamma_max + 1 new tokens per row on top
of a cache of ``--context`` tokens, at each batch size; the draft's one-token forward t_D at the same batch size;
and alpha, how often a drafted token is accepted (fixed gamma = 1 runs of ``fastdecode.generate`` on the
standard-library prompts, greedy and at T = 1). With i.i.d. acceptance a step that drafts gamma tokens emits
E(gamma) = (1 - alpha^(gamma + 1)) / (1 - alpha) tokens on average, so against plain decoding (one token per
t_T(1)) it is worth

    speed-up(gamma) = E(gamma) * t_T(1) / (t_T(gamma + 1) + gamma * t_D).

The best fixed gamma is what a fixed draft length can reach with this pair on this machine if every drafted
token were accepted independently with probability alpha: verification, sampling and host syncs lower it,
and a batch loses more (its rows accept different numbers of drafts, while its forwards are as wide as its
longest draft). Real text is accepted in runs (easy stretches, hard ones), which an adaptive length and the
confidence stop exploit, so measured speed-ups can exceed this estimate; what it shows is how the machine's
costs (the growth of t_T(n) with n, the draft's share) limit speculation at each batch size. Times: medians
over ``--repeats`` interleaved rounds.
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

from bench.common import RESULTS_DIR, output_path, script_args, script_main, write_json  # noqa: E402


def expected_tokens(alpha: float, gamma: int) -> float:
    """Tokens a chain step that drafts ``gamma`` tokens emits on average, each draft accepted with ``alpha``."""
    return float(gamma + 1) if alpha >= 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def predicted_speedups(t_target: list[float], t_draft: float, alpha: float) -> list[float]:
    """speed-up(gamma) for gamma = 1 .. len(t_target) - 1; ``t_target[n - 1]``: the target's time for n tokens."""
    return [expected_tokens(alpha, g) * t_target[0] / (t_target[g] + g * t_draft) for g in range(1, len(t_target))]


def forward_times(model, batch: int, widths: list[int], context: list[list[int]], repeats: int) -> dict[int, float]:
    """Median seconds of ``model``'s forward of n new tokens per row (n in ``widths``) after ``batch`` rows of
    ``context``; each width timed once per round, rounds interleaved."""
    from fastdecode.decoding import hf_cache as kv

    device = kv.device(model)
    rows = torch.tensor([context[i % len(context)] for i in range(batch)], device=device)
    cache = kv.new_cache(model)
    kv.forward(model, rows, cache)
    base = kv.cache_length(cache)
    times = {n: [] for n in widths}
    for r in range(repeats + 1):                 # round 0: warm-up
        for n in widths:
            ids = rows[:, -n:]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            kv.forward(model, ids, cache)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if r:
                times[n].append(time.perf_counter() - t0)
            kv.crop(cache, base)
    return {n: statistics.median(v) for n, v in times.items()}


def acceptance(target, draft, prompts, temperature: float, new_tokens: int) -> float:
    """alpha: accepted / drafted over fixed gamma = 1 runs (so every drafted token is a first one)."""
    import fastdecode

    acc = drafted = 0
    for i, p in enumerate(prompts):
        out = fastdecode.generate(target, torch.tensor([p]), draft=draft, method="speculative", draft_length=1,
                                  adaptive_draft=False, max_new_tokens=new_tokens, temperature=temperature, seed=i)
        acc, drafted = acc + out.stats.accepted_tokens, drafted + out.stats.drafted_tokens
    return acc / max(drafted, 1)


def add_arguments(p) -> None:
    from fastdecode.models import DEFAULT_PAIR
    p.add_argument("--pair", default=str(DEFAULT_PAIR), help="folder with target/ and draft/")
    p.add_argument("--batch", default="1,4,16", help="comma list of batch sizes")
    p.add_argument("--max-gamma", type=int, default=6)
    p.add_argument("--context", type=int, default=64, help="tokens in the cache before the timed forwards")
    p.add_argument("--prompts", type=int, default=8, help="standard-library prompts for alpha")
    p.add_argument("--new-tokens", type=int, default=48, help="tokens per prompt for alpha")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--pack-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="time the forwards on oneDNN-packed linears as generate() runs them (default: when it would)")
    p.add_argument("--quick", action="store_true", help="batch 1,2, gamma <= 2, 2 prompts (smoke test)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/spec_ceiling.json)")


def run(args) -> int:
    from bench.common import machine_description, stdlib_prompts
    from fastdecode.kernels.cpu_linear import packed_linears, should_pack
    from fastdecode.models import load_pair

    if args.quick:
        args.batch, args.max_gamma, args.prompts, args.new_tokens, args.repeats = "1,2", 2, 2, 8, 2
    out = output_path(args.out, RESULTS_DIR / "spec_ceiling.json", args.quick)
    target, draft, tok = load_pair(args.pair, args.device)
    prompts = stdlib_prompts(tok, args.prompts, args.context)
    alphas = {t: acceptance(target, draft, prompts, t, args.new_tokens) for t in (0.0, 1.0)}
    widths = list(range(1, args.max_gamma + 2))
    rows = []
    packed = should_pack(args.pack_weights, [target, draft])
    with torch.inference_mode(), packed_linears(target, draft, enabled=packed):
        for B in [int(b) for b in args.batch.split(",")]:
            t_t = forward_times(target, B, widths, prompts, args.repeats)
            t_d = forward_times(draft, B, [1], prompts, args.repeats)[1]
            row = dict(batch=B, target_ms={n: 1e3 * t for n, t in t_t.items()}, draft_ms=1e3 * t_d)
            for temp, a in alphas.items():
                s = predicted_speedups([t_t[n] for n in widths], t_d, a)
                best = max(range(len(s)), key=s.__getitem__)
                row[f"T={temp:g}"] = dict(alpha=a, speedups=s, best_gamma=best + 1, ceiling=s[best])
            rows.append(row)
    machine = machine_description(target.device)
    lines = [f"| batch | t_T(1) ms | t_T(n) / t_T(1), n = 2..{widths[-1]} | t_D / t_T(1) | greedy: best gamma, "
             f"ceiling (alpha {alphas[0.0]:.2f}) | T = 1: best gamma, ceiling (alpha {alphas[1.0]:.2f}) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        t1 = r["target_ms"][1]
        growth = " ".join(f"{r['target_ms'][n] / t1:.2f}" for n in widths[1:])
        g, s = r["T=0"], r["T=1"]
        lines.append(f"| {r['batch']} | {t1:.2f} | {growth} | {r['draft_ms'] / t1:.2f} | {g['best_gamma']}, "
                     f"{g['ceiling']:.2f}x | {s['best_gamma']}, {s['ceiling']:.2f}x |")
    table = "\n".join(lines)
    print(f"\n{machine}; cache of {args.context} tokens; medians of {args.repeats} rounds; packed linears: "
          f"{packed}\n\n{table}")
    write_json(out, dict(machine=machine, args=script_args(args), packed_linears=packed, alpha=alphas, rows=rows,
                         table=table))
    print(f"\nwrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
