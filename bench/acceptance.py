"""Acceptance rate of every verifier against the optimal-transport bound (``fastdecode acceptance``).

Teacher-forces a target and a draft model over a text corpus (default: the code pair on Python
standard-library files, cut into 256-token windows as the pair was trained on 256), takes the next-token
distributions p (target) and q (draft) at every position at each temperature, and reports for
k = 1, 2, 4, 8 drafts the mean over positions of
- each verifier's acceptance probability (the chance that the emitted token is one of the drafts:
  docs/algorithms.md sections 1-4): exact closed forms for speculative, rrs, spectr, greedy_draft and
  typical (lossy), a Monte Carlo estimate for rrs_without_replacement, and "optimal" when
  fastdecode.verification.optimal is installed;
- the optimal acceptance rate of any lossless verifier for i.i.d. drafts and for drafts without
  replacement (fastdecode.verification.bound).

The exact quantities cost O(V log V) per position (one ratio sort serves rrs, spectr and the i.i.d.
optimum) and are computed at every position. Three costly ones are computed on a random subset of
positions and combined with a cheap exact *control* computed everywhere,
estimate = mean_all(control) + mean_subset(value - control): rrs_without_replacement (control rrs,
2 rejection paths per position, ``--subsample`` positions: default 2048 on the CPU, all on CUDA),
optimal and the without-replacement optimum (control: the i.i.d. optimum, ``--bound-subsample``
positions: default 256 on the CPU, all on CUDA). Their error bars are standard errors (subset
sampling with finite-population correction, plus the Monte Carlo term); they vanish when the subset
is every position and the value is exact. Subset rows are scored in batches of 256 (CPU) / 4096.

Run: ``python bench/acceptance.py --quick`` (smoke: 4096 tokens, subsets of 1024 and 64 positions)
or ``python bench/acceptance.py`` (65536 tokens), also as ``fastdecode acceptance``.
Results: bench/results/acceptance.json (+ acceptance.png); with ``--quick``, bench/results/tmp/.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/<name>.py`: bench.common and this checkout's fastdecode
    sys.path.insert(0, str(ROOT))

from bench.common import output_path, script_main  # noqa: E402

DEFAULT_OUT = Path("bench/results/acceptance.json")
SUBSET = ["rrs_without_replacement", "optimal"]
BOUNDS = ["optimal_iid", "optimal_without_replacement"]
CONTROL = {"rrs_without_replacement": "rrs", "optimal": "optimal_iid", "optimal_without_replacement": "optimal_iid"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from fastdecode.models import DEFAULT_PAIR

    parser.add_argument("--target", default=str(DEFAULT_PAIR / "target"), help="target model folder or HF id")
    parser.add_argument("--draft", default=str(DEFAULT_PAIR / "draft"), help="draft model folder or HF id")
    parser.add_argument("--tokens", type=int, default=65536, help="corpus positions to score")
    parser.add_argument("--window", type=int, default=256, help="teacher-forcing window (the pair's training length)")
    parser.add_argument("--temperatures", default="0.7,1.0")
    parser.add_argument("--ks", default="1,2,4,8", help="numbers of drafts (1..16)")
    parser.add_argument("--methods", default="all", help="comma list of verifiers, or 'all'")
    parser.add_argument("--batch-windows", type=int, default=None,
                        help="windows per forward pass / batch (default: 1 on the CPU, 16 on CUDA)")
    parser.add_argument("--subsample", type=int, default=None,
                        help="positions for the Monte Carlo rrs_without_replacement estimate (0 = all; "
                             "default: all on CUDA, 2048 on the CPU)")
    parser.add_argument("--bound-subsample", type=int, default=None,
                        help="positions for 'optimal' and the without-replacement optimum (0 = all; "
                             "default: all on CUDA, 256 on the CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 4096 tokens, small subsets; writes under bench/results/tmp/")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON output (default {DEFAULT_OUT}; bench/results/tmp/ with --quick)")
    parser.add_argument("--no-plot", action="store_true")


def _methods(spec: str) -> list[str]:
    from fastdecode.verification import METHODS

    have_optimal = importlib.util.find_spec("fastdecode.verification.optimal") is not None
    names = [m for m in METHODS if m != "optimal" or have_optimal] if spec == "all" else spec.split(",")
    for m in names:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r} in --methods; choose from {sorted(METHODS)}")
    return names


class _Acc:
    """Running sums for one (temperature, k, quantity): every position, or a subset with a control."""

    def __init__(self):
        self.n = 0                 # positions seen
        self.total = 0.0           # sum of the value (exact quantities) or of the control
        self.m = 0                 # subset positions
        self.d1 = self.d2 = 0.0    # sum and sum of squares of value - control on the subset
        self.mc = 0.0              # sum over the subset of the Monte Carlo variance of the value

    def result(self, exact: bool) -> dict:
        if exact:
            return {"mean": self.total / self.n, "stderr": None, "positions": self.n}
        mean = self.total / self.n + self.d1 / self.m
        var_d = max(self.d2 / self.m - (self.d1 / self.m) ** 2, 0.0) * self.m / max(self.m - 1, 1)
        var = (1 - self.m / self.n) * var_d / self.m + self.mc / self.m ** 2
        return {"mean": mean, "stderr": math.sqrt(var), "positions": self.m}


def _exact(p, q, ks, methods) -> dict:
    """{name: [len(ks), n]} for the quantities computed at every position (closed forms)."""
    from fastdecode.verification import bound, greedy_draft, rrs, spectr, typical
    from fastdecode.verification.ratio import ratio_table

    out = {}
    table = ratio_table(p, q)                                    # one sort serves rrs, spectr and the bound
    if "speculative" in methods and 1 in ks:
        beta = torch.minimum(p, q).sum(-1)
        out["speculative"] = torch.stack([beta if k == 1 else torch.full_like(beta, float("nan")) for k in ks])
    if "rrs" in methods or "rrs_without_replacement" in methods:
        out["rrs"] = rrs.acceptance_rrs_many(p, q, ks, table)
    if "spectr" in methods:
        out["spectr"] = spectr.acceptance_spectr_many(p, q, ks, table)
    if "greedy_draft" in methods:
        out["greedy_draft"] = greedy_draft.acceptance_greedy_draft_many(p, q, ks)
    if "typical" in methods:
        out["typical"] = typical.acceptance_typical_many(p, q, ks)
    out["optimal_iid"] = bound.optimal_iid_from_table(table, ks)
    return out


def _subset_values(name: str, p, q, ks, gen, samples: int = 2):
    """([len(ks), m] values, [len(ks), m] Monte Carlo variances) of a costly quantity on m positions."""
    from fastdecode.verification import acceptance_probability, bound, rrs

    if name == "rrs_without_replacement":
        est = [rrs.acceptance_rrs_without_replacement(p, q, k, samples=samples, generator=gen) for k in ks]
        return torch.stack([e.mean for e in est]), torch.stack([e.stderr ** 2 for e in est])
    if name == "optimal":
        val = torch.stack([acceptance_probability("optimal", p, q, k).double() for k in ks])
    else:
        val = bound.optimal_acceptance_rate_many(p, q, ks, "without_replacement")
    return val, torch.zeros_like(val)


class _Subset:
    """Rows of one costly quantity waiting to be scored together (batched work is far cheaper)."""

    def __init__(self, name: str, flush_rows: int):
        self.name, self.flush_rows, self.rows = name, flush_rows, []

    def add(self, p, q, control, accs, ks, gen, final: bool = False) -> None:
        if p is not None and p.shape[0]:
            self.rows.append((p, q, control.T))                 # control: [len(ks), m]
        n = sum(r[0].shape[0] for r in self.rows)
        if not n or (n < self.flush_rows and not final):
            return
        p, q, control = (torch.cat(x) for x in zip(*self.rows))
        control, self.rows = control.T, []
        val, mc = _subset_values(self.name, p, q, ks, gen)
        for i, k in enumerate(ks):
            a = accs[k][self.name]
            d = val[i] - control[i]
            a.m += d.numel()
            a.d1 += float(d.sum())
            a.d2 += float((d * d).sum())
            a.mc += float(mc[i].sum())


def run(args) -> int:
    from tqdm.auto import tqdm

    from bench.common import stdlib_corpus
    from fastdecode.models import check_pair, load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    args.out = output_path(args.out, DEFAULT_OUT, args.quick)
    if args.quick:
        args.tokens = min(args.tokens, 4096)
        args.subsample = 1024 if args.subsample is None else args.subsample
        args.bound_subsample = 64 if args.bound_subsample is None else args.bound_subsample
    dev = torch.device(args.device)
    if args.subsample is None:
        args.subsample = 0 if dev.type == "cuda" else 2048
    if args.bound_subsample is None:
        args.bound_subsample = 0 if dev.type == "cuda" else 256
    if args.batch_windows is None:
        args.batch_windows = 16 if dev.type == "cuda" else 1
    temps = [float(t) for t in args.temperatures.split(",")]
    ks = sorted({int(k) for k in args.ks.split(",")})
    if not ks or ks[0] < 1 or ks[-1] > 16:
        raise ValueError(f"--ks must lie in 1..16, got {args.ks!r}")
    methods = _methods(args.methods)

    target, tok = load_model(args.target, dev)
    draft, dtok = load_model(args.draft, dev)
    check_pair(target, draft, tok, dtok)
    w = args.window
    n_windows = math.ceil(args.tokens / w)
    ids = torch.tensor(stdlib_corpus(tok, n_windows * w), device=dev).view(n_windows, w)
    total = n_windows * w
    f_sub = 1.0 if args.subsample == 0 else min(1.0, args.subsample / total)
    f_bound = 1.0 if args.bound_subsample == 0 else min(1.0, args.bound_subsample / total, f_sub)
    gen = torch.Generator(device=dev).manual_seed(args.seed)

    acc = {t: {k: {} for k in ks} for t in temps}
    subset_names = [m for m in SUBSET if m in methods] + ["optimal_without_replacement"]
    fraction = {"rrs_without_replacement": f_sub, "optimal": f_bound, "optimal_without_replacement": f_bound}
    flush = 256 if dev.type == "cpu" else 4096
    pending = {t: {name: _Subset(name, flush) for name in subset_names} for t in temps}
    t0 = time.perf_counter()
    bar = tqdm(total=total, desc="acceptance", unit="tok")
    for s in range(0, n_windows, args.batch_windows):
        batch = ids[s : s + args.batch_windows]
        with torch.inference_mode():
            lt = target(batch).logits.float().reshape(-1, target.config.vocab_size)   # [n, V]
            ld = draft(batch).logits.float().reshape(-1, target.config.vocab_size)
        u = torch.rand(lt.shape[0], generator=gen, device=dev)                       # subset membership
        for t in temps:
            p = torch.softmax(lt.double() / t, -1)
            q = torch.softmax(ld.double() / t, -1)
            exact = _exact(p, q, ks, methods)
            for i, k in enumerate(ks):
                for name, val in exact.items():
                    a = acc[t][k].setdefault(name, _Acc())
                    a.n += val.shape[1]
                    a.total += float(val[i].sum())
                for name in subset_names:                   # the control, at every position
                    a = acc[t][k].setdefault(name, _Acc())
                    a.n += p.shape[0]
                    a.total += float(exact[CONTROL[name]][i].sum())
            for name in subset_names:
                idx = (u < fraction[name]).nonzero()[:, 0]
                pending[t][name].add(p[idx], q[idx], exact[CONTROL[name]][:, idx], acc[t], ks, gen)
        bar.update(batch.numel())
    bar.close()
    # the subset estimates left in the buffers (the slow part on the CPU): a bar of their own
    for t, name in tqdm([(t, name) for t in temps for name in subset_names], desc="subset estimates", unit="set"):
        pending[t][name].add(None, None, None, acc[t], ks, gen, final=True)
    elapsed = time.perf_counter() - t0

    results = {}
    for t in temps:
        for k in ks:
            row = {}
            for name, a in acc[t][k].items():
                if name == "speculative" and k != 1:
                    continue
                if a.n and (name not in CONTROL or a.m):
                    row[name] = a.result(exact=name not in CONTROL)
            results.setdefault(str(t), {})[str(k)] = row
    report = {
        "description": "mean acceptance probability per position (emitted token is one of the k drafts) "
                       "and the optimal rate of any lossless verifier for each draft scheme",
        "target": args.target, "draft": args.draft, "tokens": total, "window": w,
        "corpus": "Python standard library (bench/common.py stdlib_corpus)",
        "temperatures": temps, "ks": ks, "methods": methods,
        "subsample": {"rrs_without_replacement": round(f_sub * total), "optimal_and_bound": round(f_bound * total)},
        "device": str(dev), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "elapsed_s": round(elapsed, 1), "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(format_table(report))
    print(f"\n{total} positions in {elapsed:.0f} s on {dev}; results in {args.out}")
    if not args.no_plot:
        png = args.out.with_suffix(".png")
        plot(report, png)
        print(f"plot in {png}")
    return 0


def format_table(report: dict) -> str:
    cols = [m for m in report["methods"]] + BOUNDS
    short = {"rrs_without_replacement": "rrs_wo", "greedy_draft": "greedy", "speculative": "spec",
             "optimal_iid": "OPT iid", "optimal_without_replacement": "OPT w/o"}
    lines = []
    for t, by_k in report["results"].items():
        lines.append(f"\nT = {t}   (acceptance probability; +- standard error where estimated)")
        lines.append("  k " + "".join(f"{short.get(c, c):>16}" for c in cols))
        for k, row in by_k.items():
            cells = []
            for c in cols:
                r = row.get(c)
                if r is None:
                    cells.append(f"{'-':>16}")
                elif r["stderr"] is None:
                    cells.append(f"{r['mean']:>16.4f}")
                else:
                    cells.append(f"{r['mean']:>9.4f}+-{r['stderr']:<5.4f}")
            lines.append(f"{k:>3} " + "".join(cells))
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    temps = list(report["results"])
    fig, axes = plt.subplots(1, len(temps), figsize=(6 * len(temps), 4.5), squeeze=False)
    for ax, t in zip(axes[0], temps):
        by_k = report["results"][t]
        ks = [int(k) for k in by_k]
        for name in report["methods"] + BOUNDS:
            pts = [(k, by_k[str(k)][name]) for k in ks if name in by_k[str(k)]]
            if not pts:
                continue
            x = [k for k, _ in pts]
            y = [r["mean"] for _, r in pts]
            err = [r["stderr"] or 0.0 for _, r in pts]
            if name in BOUNDS:
                style = dict(color="black", linestyle="--" if name == "optimal_iid" else ":", linewidth=2)
                label = "optimum, i.i.d. drafts" if name == "optimal_iid" else "optimum, drafts w/o replacement"
                ax.plot(x, y, label=label, **style)
                if any(err):
                    ax.fill_between(x, [a - e for a, e in zip(y, err)], [a + e for a, e in zip(y, err)],
                                    color="black", alpha=0.12, linewidth=0)
            else:
                label = name + (" (lossy)" if name == "typical" else "")
                ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k (drafts per position)")
        ax.set_ylabel("acceptance probability")
        ax.set_title(f"T = {t}, {report['tokens']} positions")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Acceptance vs number of drafts, with the optimal-transport bound")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
