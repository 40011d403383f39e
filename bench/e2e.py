"""End-to-end speed benchmark (``fastdecode bench``, ``python bench/e2e.py``): plain HF ``generate``, HF assisted generation and
fastdecode's methods on the same standard-library prompts, in one run.

For every configuration and repeat, all prompts are generated once; tokens/s of a repeat is
(new tokens over all prompts) / (wall time over all prompts), and the table reports the median over
repeats with the [min, max] spread. Speed-ups are ratios of medians measured in the same run.
EOS is left on for every method (counted tokens are the ones really generated).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/<name>.py`: bench.common and this checkout's fastdecode
    sys.path.insert(0, str(ROOT))

from bench.common import RESULTS_DIR, machine_description, output_path, script_args, script_main, write_json  # noqa: E402

DEFAULT_OUT = Path("bench/results/e2e.json")
KS, LENGTHS = "1,2,4,8", "2,3,4"  # --suite multi defaults


# the adaptive rows run the measured fallback at every temperature (what a call without a seed gets; the
# benchmark seeds its runs, which alone would select the estimated one when sampling)
MEASURED = dict(fallback="measured")


@dataclass
class Config:
    name: str
    kind: str                 # "hf", "hf_static" (static cache; compiled on CUDA), "hf_assisted" or "fastdecode"
    temperature: float
    kwargs: dict = field(default_factory=dict)


def core_configs(temperatures) -> list[Config]:
    out = []
    for t in temperatures:
        out += [
            Config("HF generate", "hf", t),
            Config("HF assisted", "hf_assisted", t),
            Config("fastdecode autoregressive", "fastdecode", t, dict(method="autoregressive")),
            Config("fastdecode speculative (adaptive)", "fastdecode", t, dict(method="speculative", **MEASURED)),
            Config("fastdecode speculative (gamma=4 fixed)", "fastdecode", t,
                   dict(method="speculative", draft_length=4, adaptive_draft=False)),
            Config("fastdecode speculative block (gamma=4 fixed)", "fastdecode", t,
                   dict(method="speculative", draft_length=4, adaptive_draft=False, verifier="block")),
        ]
    return out


def engine_configs(temperatures, device_type: str, inductor: bool = False) -> list[Config]:
    """HF's plain, fastest (static cache + torch.compile on CUDA) and assisted generation against fastdecode's
    dynamic and static engines (CUDA graphs by default on CUDA; ``inductor`` adds compile=True rows)."""
    st = dict(cache_implementation="static")
    out = []
    for t in temperatures:
        out += [
            Config("HF generate", "hf", t),
            Config("HF static" + (" + compile" if device_type == "cuda" else ""), "hf_static", t),
            Config("HF assisted", "hf_assisted", t),
            Config("fastdecode autoregressive", "fastdecode", t, dict(method="autoregressive")),
            Config("fastdecode autoregressive static", "fastdecode", t, dict(method="autoregressive", **st)),
            Config("fastdecode speculative (adaptive)", "fastdecode", t, dict(method="speculative", **MEASURED)),
            Config("fastdecode speculative static (adaptive)", "fastdecode", t,
                   dict(method="speculative", **MEASURED, **st)),
            Config("fastdecode speculative static (gamma=4)", "fastdecode", t,
                   dict(method="speculative", draft_length=4, adaptive_draft=False, **st)),
            Config("fastdecode speculative static (gamma=6)", "fastdecode", t,
                   dict(method="speculative", draft_length=6, adaptive_draft=False, **st)),
        ]
        if device_type == "cpu":  # the same without oneDNN-packed linears (kernels.cpu_linear): what the engine alone gives
            out += [Config("fastdecode autoregressive, unpacked", "fastdecode", t,
                           dict(method="autoregressive", pack_weights=False)),
                    Config("fastdecode speculative (adaptive), unpacked", "fastdecode", t,
                           dict(method="speculative", pack_weights=False, **MEASURED))]
        if t > 0:
            out.append(Config("fastdecode speculative static block (gamma=4)", "fastdecode", t,
                              dict(method="speculative", draft_length=4, adaptive_draft=False, verifier="block", **st)))
            out.append(Config("fastdecode multi_draft static (k=2, gamma=3, rrs)", "fastdecode", t,
                              dict(method="multi_draft", num_drafts=2, draft_length=3, verifier="rrs", **st)))
        if t == 0:  # Lambda attention's ring on the static engine (window 64 < prompt + new tokens)
            from fastdecode import LambdaAttention
            lam = dict(lambda_attention=LambdaAttention(window=64, num_global=4), **st)
            out += [Config("fastdecode autoregressive static + Lambda (w=64)", "fastdecode", t,
                           dict(method="autoregressive", **lam)),
                    Config("fastdecode speculative static + Lambda (w=64, gamma=4)", "fastdecode", t,
                           dict(method="speculative", draft_length=4, adaptive_draft=False, **lam)),
                    Config("fastdecode multi_draft static + Lambda (w=64, k=2, gamma=3, rrs)", "fastdecode", t,
                           dict(method="multi_draft", num_drafts=2, draft_length=3, verifier="rrs", **lam))]
        if inductor:
            out += [Config("fastdecode autoregressive static compile=True", "fastdecode", t,
                           dict(method="autoregressive", compile=True, **st)),
                    Config("fastdecode speculative static (gamma=4) compile=True", "fastdecode", t,
                           dict(method="speculative", draft_length=4, adaptive_draft=False, compile=True, **st)),
                    Config("fastdecode speculative static (gamma=6) compile=True", "fastdecode", t,   # (same buckets)
                           dict(method="speculative", draft_length=6, adaptive_draft=False, compile=True, **st)),
                    Config("fastdecode speculative static (adaptive) compile=True", "fastdecode", t,
                           dict(method="speculative", **MEASURED, compile=True, **st))]
    return out


def multi_configs(temperatures, ks, lengths, verifiers) -> list[Config]:
    out = []
    for t in temperatures:
        out.append(Config("HF generate", "hf", t))
        for L in lengths:
            out.append(Config(f"speculative gamma={L}", "fastdecode", t,
                              dict(method="speculative", draft_length=L, adaptive_draft=False)))
            out.append(Config(f"block gamma={L}", "fastdecode", t,
                              dict(method="speculative", draft_length=L, adaptive_draft=False, verifier="block")))
            for v in verifiers:
                for k in ks:
                    out.append(Config(f"multi_draft {v} k={k} L={L}", "fastdecode", t,
                                      dict(method="multi_draft", verifier=v, num_drafts=k, draft_length=L)))
    return out


def _run_once(cfg: Config, target, draft, ids, new_tokens: int, seed: int):
    """Returns (new tokens, seconds, stats or None)."""
    import fastdecode

    sync = torch.cuda.synchronize if ids.is_cuda else (lambda: None)
    if cfg.kind == "fastdecode":
        out = fastdecode.generate(target, ids, draft=draft, max_new_tokens=new_tokens,
                                  temperature=cfg.temperature, seed=seed, **cfg.kwargs)
        return out.stats.new_tokens, out.stats.wall_time_s, out.stats
    kw = dict(max_new_tokens=new_tokens, do_sample=cfg.temperature > 0)
    if cfg.temperature > 0:
        kw.update(temperature=cfg.temperature, top_k=0, top_p=1.0)
    if cfg.kind == "hf_assisted":
        kw["assistant_model"] = draft
    if cfg.kind == "hf_static":  # transformers compiles the forward by itself on CUDA with a static cache
        kw["cache_implementation"] = "static"
    torch.manual_seed(seed)
    sync()
    t0 = time.perf_counter()
    with torch.inference_mode():
        seq = target.generate(ids, **kw)
    sync()
    return seq.shape[1] - ids.shape[1], time.perf_counter() - t0, None


def run_configs(configs, target, draft, prompts, new_tokens: int, repeats: int, progress=True) -> list[dict]:
    from tqdm.auto import tqdm

    device = target.device
    rows = []
    bar = tqdm(total=len(configs) * repeats * len(prompts), desc="bench", disable=not progress, unit="gen")
    for cfg in configs:
        try:
            t_warm = time.perf_counter()
            warm = torch.tensor([prompts[0]], device=device)
            _run_once(cfg, target, draft, warm, new_tokens, 0)  # warm-up (allocations, recordings, compilation)
            t_warm = time.perf_counter() - t_warm
            rates, alphas, taus, toks = [], [], [], []
            for r in range(repeats):
                n_tok, secs = 0, 0.0
                acc = drafted = calls = 0
                for i, pr in enumerate(prompts):
                    n, s, st = _run_once(cfg, target, draft, torch.tensor([pr], device=device), new_tokens,
                                         1000 * r + i)
                    n_tok += n
                    secs += s
                    if st is not None:
                        acc += st.accepted_tokens
                        drafted += st.drafted_tokens
                        calls += st.target_calls
                    bar.update(1)
                rates.append(n_tok / secs)
                toks.append(n_tok)
                if drafted:
                    alphas.append(acc / drafted)
                if calls:
                    taus.append(n_tok / calls)
        except Exception as e:  # one failing configuration must not cost the rest of the run
            print(f"\n{cfg.name} (T={cfg.temperature:g}) failed: {type(e).__name__}: {e}", flush=True)
            rows.append(dict(name=cfg.name, kind=cfg.kind, temperature=cfg.temperature, kwargs=cfg.kwargs,
                             error=f"{type(e).__name__}: {e}", tokens_per_s=float("nan"), tokens_per_s_min=float("nan"),
                             tokens_per_s_max=float("nan"), new_tokens=0, alpha=None, tau=None, warmup_s=None))
            continue
        rows.append(dict(name=cfg.name, kind=cfg.kind, temperature=cfg.temperature, kwargs=cfg.kwargs,
                         tokens_per_s=statistics.median(rates), tokens_per_s_min=min(rates),
                         tokens_per_s_max=max(rates), new_tokens=statistics.median(toks),
                         alpha=statistics.median(alphas) if alphas else None,
                         tau=statistics.median(taus) if taus else None, warmup_s=t_warm))
        print(f"\n{cfg.name} (T={cfg.temperature:g}): {rows[-1]['tokens_per_s']:.1f} tok/s", flush=True)
    bar.close()
    for row in rows:  # speed-ups against the HF baselines of the same temperature, same run
        for base_kind, key in (("hf", "vs_hf"), ("hf_static", "vs_hf_static"), ("hf_assisted", "vs_hf_assisted")):
            base = next((b for b in rows if b["kind"] == base_kind and b["temperature"] == row["temperature"]), None)
            row[key] = row["tokens_per_s"] / base["tokens_per_s"] if base else None
    return rows


def markdown_table(rows: list[dict]) -> str:
    f = lambda x, fmt: "-" if x is None else format(x, fmt)  # noqa: E731
    static = any(r["kind"] == "hf_static" for r in rows)
    assisted = any(r["kind"] == "hf_assisted" for r in rows)
    lines = ["| T | method | tok/s (median [min, max]) | alpha | tau | vs HF generate |"
             + (" vs HF static |" if static else "") + (" vs HF assisted |" if assisted else ""),
             "|---|---|---|---|---|---|" + ("---|" if static else "") + ("---|" if assisted else "")]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['temperature']:g} | {r['name']} | failed: {r['error'][:80]} |")
            continue
        lines.append(f"| {r['temperature']:g} | {r['name']} | {r['tokens_per_s']:.1f} [{r['tokens_per_s_min']:.1f}, "
                     f"{r['tokens_per_s_max']:.1f}] | {f(r['alpha'], '.3f')} | {f(r['tau'], '.2f')} | "
                     f"{f(r['vs_hf'], '.2f')}x |" + (f" {f(r.get('vs_hf_static'), '.2f')}x |" if static else "")
                     + (f" {f(r['vs_hf_assisted'], '.2f')}x |" if assisted else ""))
    return "\n".join(lines)


def plot_multi(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in ((axes[0], "tau", "tau (tokens per target call)"), (axes[1], "tokens_per_s", "tokens/s")):
        series: dict = {}
        for r in rows:
            kw = r["kwargs"]
            if kw.get("method") == "multi_draft":
                series.setdefault((kw["verifier"], kw["draft_length"], r["temperature"]), []).append((kw["num_drafts"], r[key]))
        for (v, L, t), pts in sorted(series.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{v} L={L} T={t:g}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("k (number of drafts)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def add_arguments(p) -> None:
    from fastdecode.models import DEFAULT_PAIR
    p.add_argument("--pair", default=str(DEFAULT_PAIR), help="folder with target/ and draft/")
    p.add_argument("--suite", choices=["core", "multi", "engine"], default="core",
                   help="core: HF vs fastdecode methods (greedy and T=1); multi: multi-draft sweep over k, L, verifiers; "
                        "engine: HF plain / static (+compile on CUDA) / assisted vs fastdecode's dynamic and static engines")
    p.add_argument("--inductor", action="store_true", help="engine suite: add compile=True (torch.compile) rows")
    p.add_argument("--skip", default="", help="configuration names to leave out, separated by ';' (names hold commas), "
                                             "e.g. 'HF assisted' where its run would take most of a timed GPU session")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--temperatures", default=None, help="comma list (default: core 0,1; multi 0.7,1)")
    p.add_argument("--ks", default=KS)
    p.add_argument("--lengths", default=LENGTHS)
    p.add_argument("--verifiers", default="rrs,spectr,optimal")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2 prompts, 1 repeat, 48 tokens (multi: T=1, k=2,4, gamma=3); "
                        "writes under bench/results/tmp/")
    p.add_argument("--out", default=None,
                   help="JSON output (default bench/results/e2e_<suite>.json; bench/results/tmp/ with --quick)")


def run(args) -> int:
    from bench.common import stdlib_prompts
    from fastdecode.models import load_pair

    if args.quick:
        args.prompts, args.repeats, args.new_tokens = 2, 1, 48
        if args.suite == "multi":  # 9 configurations instead of 2 x 43 (each run on every prompt)
            args.temperatures = args.temperatures or "1"
            args.ks = "2,4" if args.ks == KS else args.ks
            args.lengths = "3" if args.lengths == LENGTHS else args.lengths
    temps = [float(t) for t in (args.temperatures or ("0.7,1" if args.suite == "multi" else "0,1")).split(",")]
    out = args.out = output_path(args.out, RESULTS_DIR / f"e2e_{args.suite}.json", args.quick)
    target, draft, tok = load_pair(args.pair, args.device, getattr(torch, args.dtype))
    prompts = stdlib_prompts(tok, args.prompts, args.prompt_tokens)
    if args.suite == "core":
        configs = core_configs(temps)
    elif args.suite == "engine":
        configs = engine_configs(temps, target.device.type, args.inductor)
    else:
        configs = multi_configs(temps, [int(k) for k in args.ks.split(",")], [int(x) for x in args.lengths.split(",")],
                                args.verifiers.split(","))
    skip = {name.strip() for name in args.skip.split(";") if name.strip()}
    unknown = skip - {c.name for c in configs}
    if unknown:
        raise SystemExit(f"--skip: no configuration named {sorted(unknown)} in suite {args.suite!r}")
    configs = [c for c in configs if c.name not in skip]
    rows = run_configs(configs, target, draft, prompts, args.new_tokens, args.repeats)
    table = markdown_table(rows)
    machine = machine_description(target.device)
    print(f"\n{len(prompts)} standard-library prompts x {args.prompt_tokens} tokens, {args.new_tokens} new tokens, "
          f"median of {args.repeats} repeats, {machine}, {args.dtype}\n")
    print(table)
    write_json(out, dict(machine=machine, args=script_args(args), rows=rows, table=table))
    if args.suite == "multi":
        plot_multi(rows, out.with_suffix(".png"))
    print(f"\nwrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
