"""Prompt lookup (n-gram) speculation vs Hugging Face generate, plain and with prompt_lookup_num_tokens, greedy.

Two tasks on the code pair's target (no draft model is used):
- copy: the prompt holds a standard-library function's source, then the comment
  ``# the same function again, unchanged:`` and the function's first line again; the model copies;
- plain: the usual standard-library prompts (a window of a source file), where little is copied.
Four runs per prompt, interleaved: HF ``generate`` greedy, HF with ``prompt_lookup_num_tokens=10``,
fastdecode ``prompt_lookup``, fastdecode ``autoregressive``; median of ``--repeats`` runs per prompt (one
warm-up of each method first).
Every output is checked against HF greedy (all four are greedy: they must agree token for token).

Usage: python bench/prompt_lookup.py [--copy 6] [--plain 6] [--new 96] [--repeats 3] [--more] [--out FILE.json]
(--more: also the static engine's prompt lookup and the draft model's fallback, on both engines.)
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/<name>.py`: bench.common and this checkout's fastdecode
    sys.path.insert(0, str(ROOT))

import fastdecode  # noqa: E402
from bench.common import stdlib_prompts, stdlib_sources  # noqa: E402
from fastdecode.models import load_pair  # noqa: E402

INSTRUCTION = "\n# the same function again, unchanged:\n"
RESULTS = Path(__file__).parent / "results"


def copy_prompts(tok, n: int, min_tokens: int = 40, max_tokens: int = 110) -> list[list[int]]:
    """n prompts: a stdlib function (min_tokens..max_tokens tokens), the instruction comment, its first line."""
    out = []
    for _, text in stdlib_sources():
        try:
            tree = ast.parse(text)
        except SyntaxError:
            continue
        for node in tree.body:
            if not isinstance(node, ast.FunctionDef):
                continue
            src = ast.get_source_segment(text, node)
            if src is None or node.decorator_list:
                continue
            if not (min_tokens <= len(tok(src)["input_ids"]) <= max_tokens):
                continue
            first = src.splitlines(keepends=True)[0]
            out.append(tok(src + "\n" + INSTRUCTION + first)["input_ids"])
            break  # one function per file: different files, different styles
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} copy prompts found")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copy", type=int, default=6)
    ap.add_argument("--plain", type=int, default=6)
    ap.add_argument("--new", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(RESULTS / "prompt_lookup.json"))
    ap.add_argument("--more", action="store_true",
                    help="also the static engine's prompt_lookup and the draft model's fallback (both engines)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    target, draft, tok = load_pair(dtype=torch.float32)
    tasks = {"copy": copy_prompts(tok, args.copy), "plain": stdlib_prompts(tok, n=args.plain, prompt_tokens=64)}
    n = args.new

    def hf(ids, **kw):
        return target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                               do_sample=False, **kw)

    runs = {
        "HF generate": lambda ids: hf(ids),
        "HF prompt_lookup_num_tokens=10": lambda ids: hf(ids, prompt_lookup_num_tokens=10),
        "fastdecode prompt_lookup": lambda ids: fastdecode.generate(
            target, ids, method="prompt_lookup", max_new_tokens=n, temperature=0, eos_token_id=[]),
        "fastdecode autoregressive": lambda ids: fastdecode.generate(
            target, ids, method="autoregressive", max_new_tokens=n, temperature=0, eos_token_id=[]),
    }
    if args.more:
        def pl(**kw):
            return lambda ids: fastdecode.generate(target, ids, method="prompt_lookup", max_new_tokens=n, temperature=0,
                                                   eos_token_id=[], **kw)
        runs.update({"fastdecode prompt_lookup static": pl(cache_implementation="static"),
                     "fastdecode prompt_lookup + draft": pl(draft=draft),
                     "fastdecode prompt_lookup + draft, static": pl(draft=draft, cache_implementation="static")})
    rows, tables = [], {}
    for fn in runs.values():  # one warm-up of each
        fn(torch.tensor([tasks["copy"][0]]))
    for task, prompts in tasks.items():
        per_prompt = {name: [] for name in runs}
        for i, prompt in enumerate(prompts):
            ids = torch.tensor([prompt])
            ref = None
            times = {name: [] for name in runs}
            for r in range(1, args.repeats + 1):
                for name, fn in runs.items():
                    t0 = time.perf_counter()
                    out = fn(ids)
                    dt = time.perf_counter() - t0
                    seq = out if isinstance(out, torch.Tensor) else out.sequences
                    if ref is None:
                        ref = seq
                    if not torch.equal(seq, ref):
                        raise AssertionError(f"{task} prompt {i}: {name} differs from HF greedy")
                    if r:
                        times[name].append(dt)
                    if r == 1 and name == "fastdecode prompt_lookup":
                        accept = out.stats.acceptance_rate
                        calls = out.stats.target_calls
            for name in runs:
                tps = n / statistics.median(times[name])
                per_prompt[name].append(tps)
                rows.append(dict(task=task, prompt=i, prompt_tokens=len(prompt), method=name, tokens_per_s=tps,
                                 times_s=times[name]))
            rows.append(dict(task=task, prompt=i, method="fastdecode prompt_lookup (stats)",
                             acceptance_rate=accept, target_calls=calls))
            print(task, i, {k: round(v[-1], 1) for k, v in per_prompt.items()}, f"target calls {calls}", flush=True)
        tables[task] = {name: statistics.median(v) for name, v in per_prompt.items()}

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor() or platform.machine()) if Path("/proc/cpuinfo").exists() else platform.machine()
    machine = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    summary = {}
    for task, t in tables.items():
        pl, hf_plain, hf_pl, ar = (t["fastdecode prompt_lookup"], t["HF generate"],
                                   t["HF prompt_lookup_num_tokens=10"], t["fastdecode autoregressive"])
        summary[task] = dict(tokens_per_s=t, vs_hf=pl / hf_plain, vs_hf_prompt_lookup=pl / hf_pl,
                             vs_fastdecode_autoregressive=pl / ar)
    goals = {
        ">= HF prompt lookup (copy)": summary["copy"]["vs_hf_prompt_lookup"] >= 1.0,
        ">= HF prompt lookup (plain)": summary["plain"]["vs_hf_prompt_lookup"] >= 1.0,
        ">= 2x HF generate (copy)": summary["copy"]["vs_hf"] >= 2.0,
        "not slower than plain decoding (plain: vs HF generate)": summary["plain"]["vs_hf"] >= 1.0,
        "not slower than plain decoding (plain: vs fastdecode autoregressive)":
            summary["plain"]["vs_fastdecode_autoregressive"] >= 1.0,
    }
    result = dict(settings=dict(copy_prompts=args.copy, plain_prompts=args.plain, new_tokens=n, repeats=args.repeats,
                                dtype="float32", model="models/code-pair/target", greedy=True),
                  machine=machine, summary=summary, goals=goals, rows=rows)
    Path(args.out).write_text(json.dumps(result, indent=1))
    md = [f"Machine: {machine}. Code pair target (float32), greedy, {n} new tokens, median over prompts of the "
          f"per-prompt median of {args.repeats} runs; {args.copy} copy prompts, {args.plain} plain prompts.", "",
          "| task | HF generate | HF prompt_lookup_num_tokens=10 | fastdecode prompt_lookup | fastdecode autoregressive "
          "| prompt_lookup / HF | / HF prompt lookup | / autoregressive |",
          "|---|---|---|---|---|---|---|---|"]
    for task, s in summary.items():
        t = s["tokens_per_s"]
        md.append(f"| {task} | {t['HF generate']:.1f} | {t['HF prompt_lookup_num_tokens=10']:.1f} | "
                  f"{t['fastdecode prompt_lookup']:.1f} | {t['fastdecode autoregressive']:.1f} | {s['vs_hf']:.2f}x | "
                  f"{s['vs_hf_prompt_lookup']:.2f}x | {s['vs_fastdecode_autoregressive']:.2f}x |")
    more = [name for name in runs if name.startswith("fastdecode prompt_lookup ")]
    if more:   # --more: the other prompt-lookup variants, against the dynamic engine's and HF's prompt lookup
        md += ["", "| task | " + " | ".join(more) + " |", "|---|" + "---|" * len(more)]
        for task, t in tables.items():
            md.append(f"| {task} | " + " | ".join(
                f"{t[m]:.1f} ({t[m] / t['fastdecode prompt_lookup']:.2f}x dynamic, "
                f"{t[m] / t['HF prompt_lookup_num_tokens=10']:.2f}x HF lookup)" for m in more) + " |")
    md += ["", "Goals: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in goals.items())]
    Path(args.out).with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
