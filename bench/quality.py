"""``fastdecode quality``: what entropy switching costs in quality, on a real task.

    python bench/quality.py --quick          # smoke run, results under bench/results/tmp
    python bench/quality.py                  # 500 prompts, full threshold sweep -> bench/results/quality.*

Task (see bench/line_completion.py): complete real lines of function bodies of the
Python standard library, cut just after each line's first word; greedy decoding until the newline
(at most ``--max-new-tokens``); exact match with the rest of the real line and difflib similarity.

Configurations, all on the same prompts: the small model (draft) alone, the large model (target)
alone, and ``method="entropy_switch"`` for a sweep of thresholds tau (bits). For each: large-model
token fraction f_L, exact-match accuracy (and as a fraction of the large model's), similarity,
estimated cost C/C_L = f_L + (1 - f_L) N_S / N_L (tokens x parameters, docs/algorithms.md section 5), forward
cost (tokens fed through each model x its parameters, prompt prefill and catch-ups included, over
the large model alone) and measured wall time against both models alone.

Goal (issue 6): a threshold that keeps >= 97% of the large model's exact-match accuracy while the
large model produces <= 45% of the tokens.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/<name>.py`: bench.common and this checkout's fastdecode
    sys.path.insert(0, str(ROOT))

from bench.common import script_main  # noqa: E402

GOAL_RELATIVE_ACCURACY = 0.97
GOAL_LARGE_FRACTION = 0.45
DEFAULT_THRESHOLDS = "0.5,1,1.5,2,2.5,3,3.5,4,5"
QUICK_THRESHOLDS = "1,2,3"


@dataclass(frozen=True)
class RunConfig:
    name: str
    kind: str                 # "draft" | "target" | "switch"
    threshold: float = math.nan
    min_dwell: int = 1
    window: int = 5
    speculate: bool = False


def add_arguments(p) -> None:
    p.add_argument("--prompts", type=int, default=None, help="number of line-completion prompts (default 500; 40 with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke run: 40 prompts, 3 thresholds, results under bench/results/tmp")
    p.add_argument("--thresholds", default=None, help=f"comma-separated entropy thresholds in bits (default {DEFAULT_THRESHOLDS})")
    p.add_argument("--min-dwell", default="4", help="comma-separated min_dwell values to sweep (default 4)")
    p.add_argument("--window", default="5", help="comma-separated entropy_window values w (default 5, as in the paper)")
    p.add_argument("--speculate", action="store_true", help="also run every threshold with speculate_when_large=True")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--max-prompt-tokens", type=int, default=160, help="context budget (the pair was trained on 256-token windows)")
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt selection")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=1, help="processes sharing the prompts (CPU only)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    p.add_argument("--pair", default=None, help="folder with target/ and draft/ (default: the code pair)")
    p.add_argument("--out", default=None, help="output folder (default bench/results, bench/results/tmp with --quick)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop starting new prompt chunks after this long and report the prompts done so far")
    p.add_argument("--no-plot", action="store_true")


def run_configs(thresholds: list[float], dwells: list[int], windows: list[int], speculate: bool) -> list[RunConfig]:
    cfgs = [RunConfig("small alone", "draft"), RunConfig("large alone", "target")]
    for spec in (False, True) if speculate else (False,):
        for w in windows:
            for d in dwells:
                for t in thresholds:
                    name = (f"switch tau={t:g}" + (f" w={w}" if len(windows) > 1 else "")
                            + (f" dwell={d}" if len(dwells) > 1 else "") + (" +spec" if spec else ""))
                    cfgs.append(RunConfig(name, "switch", t, d, w, spec))
    return cfgs


# ---------------------------------------------------------------------------------------- workers
def _evaluate_chunk(tasks: list[dict], cfgs: list[RunConfig], settings: dict, progress=None) -> list[dict]:
    """Run every configuration on every task of the chunk (configs interleaved per prompt, so
    machine noise hits them alike). Returns one record per task."""
    import torch

    from fastdecode import generate
    from fastdecode.models import DEFAULT_PAIR, load_pair
    from bench.line_completion import completion_text, newline_token_ids, score

    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    target, draft, tok = load_pair(settings["pair"] or DEFAULT_PAIR, settings["device"])
    stop = sorted(set(newline_token_ids(tok)) | {tok.eos_token_id})

    def one(cfg: RunConfig, ids, max_new: int):
        kw = dict(max_new_tokens=max_new, temperature=0.0, eos_token_id=stop)
        if cfg.kind == "switch":
            return generate(target, ids, draft=draft, method="entropy_switch", entropy_threshold=cfg.threshold,
                            entropy_window=cfg.window, min_dwell=cfg.min_dwell,
                            speculate_when_large=cfg.speculate, **kw)
        return generate(target if cfg.kind == "target" else draft, ids, method="autoregressive", **kw)

    out = []
    for j, task in enumerate(tasks):
        ids = tok(task["prompt"], return_tensors="pt").input_ids.to(settings["device"])
        if j == 0:  # untimed warm-up of every configuration
            for cfg in cfgs:
                one(cfg, ids, 4)
        rec = dict(file=task["file"], lineno=task["lineno"], reference=task["reference"],
                   prompt_tokens=ids.shape[1], runs={})
        for cfg in cfgs:
            res = one(cfg, ids, settings["max_new_tokens"])
            st = res.stats
            text = completion_text(tok.decode(res.sequences[0, ids.shape[1]:]))
            exact, sim = score(text, task["reference"])
            n = st.new_tokens
            e = st.extra
            by_t = e.get("tokens_by_target", n if cfg.kind == "target" else 0)
            fed_t = e.get("fed_tokens_target", ids.shape[1] + n - 1 if cfg.kind == "target" else 0)
            fed_d = e.get("fed_tokens_draft", ids.shape[1] + n - 1 if cfg.kind == "draft" else 0)
            rec["runs"][cfg.name] = dict(completion=text, exact=exact, similarity=sim, new_tokens=n,
                                         tokens_by_target=by_t, fed_target=fed_t, fed_draft=fed_d,
                                         switches=e.get("switches", 0), wall_s=st.wall_time_s)
        out.append(rec)
        if progress is not None:
            progress.update(1)
    return out


def _evaluate(tasks: list[dict], cfgs: list[RunConfig], settings: dict, workers: int,
              max_seconds: float | None = None) -> list[dict]:
    from tqdm.auto import tqdm

    deadline = time.perf_counter() + max_seconds if max_seconds else math.inf

    chunk = max(1, min(20, math.ceil(len(tasks) / (3 * max(workers, 1)))))
    chunks = [tasks[i:i + chunk] for i in range(0, len(tasks), chunk)]
    results: list[list[dict]] = [[] for _ in chunks]
    bar = tqdm(total=len(tasks), desc=f"line completion x {len(cfgs)} configs", unit="prompt")
    if workers <= 1:
        results = []
        for c in chunks:
            results.append(_evaluate_chunk(c, cfgs, settings, bar))
            if time.perf_counter() > deadline:
                break
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            futs = {pool.submit(_evaluate_chunk, c, cfgs, settings): i for i, c in enumerate(chunks)}
            for f in as_completed(futs):
                if f.cancelled():
                    continue
                results[futs[f]] = f.result()
                bar.update(len(chunks[futs[f]]))
                if time.perf_counter() > deadline:
                    for g in futs:
                        g.cancel()  # chunks already running still finish
    bar.close()
    return [r for rs in results for r in rs]


# ---------------------------------------------------------------------------------------- summary
def summarize(records: list[dict], cfgs: list[RunConfig], params_small: int, params_large: int) -> list[dict]:
    """One row per configuration, aggregated over all prompts."""
    from fastdecode.decoding.entropy_switch import estimated_cost_ratio

    def tot(name, key):
        return sum(r["runs"][name][key] for r in records)

    n = len(records)
    base_fed = tot("large alone", "fed_target") * params_large
    wall_l, wall_s = tot("large alone", "wall_s"), tot("small alone", "wall_s")
    acc_l = tot("large alone", "exact") / n
    rows = []
    for c in cfgs:
        toks = tot(c.name, "new_tokens")
        f_l = tot(c.name, "tokens_by_target") / toks if toks else math.nan
        acc = tot(c.name, "exact") / n
        wall = tot(c.name, "wall_s")
        rows.append(dict(
            config=c.name, kind=c.kind, threshold=c.threshold if c.kind == "switch" else None,
            min_dwell=c.min_dwell if c.kind == "switch" else None,
            window=c.window if c.kind == "switch" else None, speculate=c.speculate,
            prompts=n, exact=tot(c.name, "exact"), accuracy=acc,
            relative_accuracy=acc / acc_l if acc_l else math.nan,
            similarity=tot(c.name, "similarity") / n, new_tokens=toks, large_fraction=f_l,
            estimated_cost_ratio=estimated_cost_ratio(f_l, params_small, params_large),
            forward_cost_ratio=(tot(c.name, "fed_target") * params_large + tot(c.name, "fed_draft") * params_small) / base_fed,
            wall_s=wall, wall_vs_large=wall / wall_l, wall_vs_small=wall / wall_s,
            switches_per_prompt=tot(c.name, "switches") / n,
        ))
        rows[-1]["meets_goal"] = bool(c.kind == "switch" and rows[-1]["relative_accuracy"] >= GOAL_RELATIVE_ACCURACY
                                      and f_l <= GOAL_LARGE_FRACTION)
    return rows


def best_config(rows: list[dict]) -> dict | None:
    """The goal-meeting switch configuration with the fewest large-model tokens (None if none meets it)."""
    ok = [r for r in rows if r["meets_goal"]]
    return min(ok, key=lambda r: (r["large_fraction"], -r["accuracy"])) if ok else None


def markdown_table(rows: list[dict]) -> str:
    head = ("| configuration | large-model tokens | exact match | % of large | similarity | est. cost C/C_L "
            "| forward cost | wall s | wall / large | wall / small | switches / line |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['config']}{' **(goal)**' if r['meets_goal'] else ''} | {100 * r['large_fraction']:.1f}% "
        f"| {r['exact']}/{r['prompts']} ({100 * r['accuracy']:.1f}%) | {100 * r['relative_accuracy']:.1f}% "
        f"| {r['similarity']:.3f} | {r['estimated_cost_ratio']:.3f} | {r['forward_cost_ratio']:.3f} "
        f"| {r['wall_s']:.1f} | {r['wall_vs_large']:.2f} | {r['wall_vs_small']:.2f} | {r['switches_per_prompt']:.2f} |\n"
        for r in rows)
    return head + body


def goal_line(rows: list[dict]) -> str:
    b = best_config(rows)
    goal = (f"goal: >= {100 * GOAL_RELATIVE_ACCURACY:.0f}% of the large model's exact-match accuracy with the large "
            f"model producing <= {100 * GOAL_LARGE_FRACTION:.0f}% of tokens")
    if b is None:
        return goal + ": NOT met by any swept threshold."
    return (goal + f": MET by {b['config']} ({100 * b['relative_accuracy']:.1f}% of the large model's accuracy, "
            f"{100 * b['large_fraction']:.1f}% large-model tokens, estimated cost {b['estimated_cost_ratio']:.3f} C_L).")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sw = [r for r in rows if r["kind"] == "switch"]
    large = next(r for r in rows if r["kind"] == "target")
    small = next(r for r in rows if r["kind"] == "draft")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for spec in sorted({r["speculate"] for r in sw}):
        rs = sorted((r for r in sw if r["speculate"] == spec), key=lambda r: r["large_fraction"])
        sc = ax.scatter([r["large_fraction"] for r in rs], [r["accuracy"] for r in rs],
                        c=[r["threshold"] for r in rs], cmap="viridis", marker="s" if spec else "o",
                        label="entropy switch" + (" + speculative large" if spec else ""), zorder=3)
        for r in rs:
            ax.annotate(f"{r['threshold']:g}" + (f"/d{r['min_dwell']}" if len({x['min_dwell'] for x in sw}) > 1 else ""),
                        (r["large_fraction"], r["accuracy"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        fig.colorbar(sc, ax=ax, label="threshold tau (bits)") if not spec else None
    ax.plot([0, 1], [small["accuracy"], large["accuracy"]], c="lightgray", lw=1, zorder=1,
            label="each line from one model, picked at random (reference)")
    ax.scatter([0], [small["accuracy"]], marker="v", c="tab:red", s=60, label="small alone", zorder=4)
    ax.scatter([1], [large["accuracy"]], marker="^", c="tab:blue", s=60, label="large alone", zorder=4)
    ax.axhline(GOAL_RELATIVE_ACCURACY * large["accuracy"], ls="--", c="gray", lw=1, label="97% of large")
    ax.axvline(GOAL_LARGE_FRACTION, ls=":", c="gray", lw=1, label="45% large tokens")
    ax.set_xlabel("fraction of tokens generated by the large model")
    ax.set_ylabel("exact-match accuracy")
    ax.set_title(f"Entropy switch, stdlib line completion ({large['prompts']} prompts, greedy)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------- entry
def run(args) -> int:
    import platform

    import torch
    from transformers import AutoTokenizer

    from fastdecode.decoding.entropy_switch import parameter_count
    from fastdecode.models import DEFAULT_PAIR, load_pair
    from bench.line_completion import line_tasks
    from bench.common import stdlib_dir

    n = args.prompts if args.prompts is not None else (40 if args.quick else 500)
    thresholds = [float(x) for x in (args.thresholds or (QUICK_THRESHOLDS if args.quick else DEFAULT_THRESHOLDS)).split(",")]
    dwells = [int(x) for x in str(args.min_dwell).split(",")]
    windows = [int(x) for x in str(args.window).split(",")]
    if n < 1 or args.workers < 1 or args.max_new_tokens < 1:
        raise ValueError("--prompts, --workers and --max-new-tokens must be >= 1")
    out = Path(args.out) if args.out else Path("bench/results/tmp" if args.quick else "bench/results")
    out.mkdir(parents=True, exist_ok=True)
    pair = Path(args.pair) if args.pair else DEFAULT_PAIR

    tok = AutoTokenizer.from_pretrained(str(pair / "target"))
    tasks = [asdict(t) for t in line_tasks(tok, n, args.max_prompt_tokens, args.seed)]
    cfgs = run_configs(thresholds, dwells, windows, args.speculate)
    settings = dict(pair=str(pair), device=args.device, threads=args.threads, max_new_tokens=args.max_new_tokens)
    t0 = time.perf_counter()
    records = _evaluate(tasks, cfgs, settings, args.workers if args.device == "cpu" else 1, args.max_seconds)
    elapsed = time.perf_counter() - t0
    if len(records) < n:
        print(f"--max-seconds reached: {len(records)} of {n} prompts evaluated")
        n = len(records)

    target, draft, _ = load_pair(pair, "cpu")
    n_l, n_s = parameter_count(target), parameter_count(draft)
    rows = summarize(records, cfgs, n_s, n_l)
    table = markdown_table(rows)
    goal = goal_line(rows)
    note = (f"{n} prompts from the Python {platform.python_version()} standard library, greedy, at most "
            f"{args.max_new_tokens} new tokens, window w={args.window}, min_dwell={args.min_dwell}, "
            f"device {args.device}, {args.workers} worker(s). Accuracy and token fractions are deterministic; "
            "wall times were measured with every configuration interleaved per prompt, but on a shared "
            "machine they are noisy. Cost: N_S = {:.2f} M, N_L = {:.2f} M parameters.".format(n_s / 1e6, n_l / 1e6))
    print(table)
    print(goal)
    print(note)
    (out / "quality.md").write_text(table + "\n" + goal + "\n\n" + note + "\n")
    summary = dict(benchmark="quality", task="stdlib line completion (cut after the line's first word)",
                   prompts=n, thresholds=thresholds, min_dwell=dwells, window=windows,
                   max_new_tokens=args.max_new_tokens, max_prompt_tokens=args.max_prompt_tokens,
                   device=args.device, workers=args.workers, threads=args.threads or torch.get_num_threads(),
                   torch=torch.__version__, python=platform.python_version(), stdlib=str(stdlib_dir()),
                   elapsed_s=elapsed,
                   params_small=n_s, params_large=n_l, goal=goal, best=best_config(rows), note=note,
                   rows=rows, per_prompt=records)
    (out / "quality.json").write_text(json.dumps(summary, indent=1))
    if not args.no_plot:
        plot(rows, out / "quality.png")
    print(f"wrote {out / 'quality.json'}, {out / 'quality.md'}" + ("" if args.no_plot else f", {out / 'quality.png'}"))
    return 0


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
