"""Long-context benchmark for Lambda attention (``fastdecode long-context``, ``bench/long_context.py``).

On the code pair's target (trained on 256-token windows), with standard-library sources concatenated
to the longest requested length (``prompts.stdlib_corpus``):

1. Perplexity per position bucket, for four ways of reading the same tokens:
   - ``vanilla``: full attention at true positions (beyond 256 the model is out of its training length);
   - ``lambda``: Lambda attention (``window`` = 256, ``num_global``), streamed through the bounded cache
     one window-sized chunk at a time (the paper's "cached" evaluation);
   - ``window_only``: the same without global tokens (num_global = 0), i.e. a streaming sliding window;
   - ``sliding``: the reference "model inside its training length": every token is scored by a fresh
     forward over at most ``window`` preceding tokens at positions 0..window-1 (strided: windows advance
     by ``--sw-stride`` tokens and score their last ``stride`` tokens, so each token sees between
     window - stride + 1 and window tokens). Goal: lambda within 10% of sliding at the longest length.
   All methods are causal, so the perplexity "at length n" is computed from the positions < n of one
   pass over the longest sequence.
2. Passkey retrieval adapted to code: ``key = 48213`` on the first line, standard-library code as
   filler, then ``assert key ==``; the true key must out-score 9 random 5-digit keys (teacher-forced
   log-likelihood) and is also decoded greedily (exact match).
3. Decode speed and memory vs context length, vanilla vs Lambda: tokens/s (median over greedy decode
   steps, after warm-up) following a chunked prefill, the KV-cache bytes, and on CUDA the peak of
   ``torch.cuda.max_memory_allocated`` above the weights (prefill + decode, and decode alone). On CUDA
   Lambda is timed twice: with the Triton decode kernel and with the PyTorch path (``decode_kernel=False``).

Results: ``bench/results/long_context.json`` (``bench/results/tmp/long_context_quick.json`` with ``--quick``) and PNG plots
next to it; a markdown table is printed and stored in the JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/<name>.py`: bench.common and this checkout's fastdecode
    sys.path.insert(0, str(ROOT))

from bench.common import QUICK_DIR, RESULTS_DIR, script_main  # noqa: E402

METHODS = ("vanilla", "lambda", "window_only", "sliding")
DEFAULT_LENGTHS = (1024, 2048, 4096, 8192, 16384)
QUICK_LENGTHS = (512, 1024)


def add_arguments(p) -> None:
    p.add_argument("--quick", action="store_true", help="short lengths and few trials (CPU smoke run)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--lengths", default=None, help="comma-separated context lengths (default 1k..16k; quick 512,1024)")
    p.add_argument("--window", type=int, default=256, help="Lambda window L (the model's training length)")
    p.add_argument("--num-global", type=int, default=8)
    p.add_argument("--sw-stride", type=int, default=None, help="sliding-window reference stride (default 8 GPU, 64 CPU)")
    p.add_argument("--passkey-lengths", default=None, help="comma-separated passkey context lengths")
    p.add_argument("--passkey-trials", type=int, default=None)
    p.add_argument("--decode-tokens", type=int, default=None, help="timed decode steps per context length")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: ppl,passkey,decode")
    p.add_argument("--out", default=None, help="output folder (default bench/results; bench/results/tmp with --quick)")


def _lengths(text: str | None, default) -> list[int]:
    return sorted({int(x) for x in text.split(",")}) if text else list(default)


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# -- 1. perplexity ---------------------------------------------------------------------------------
def _nll_streaming(model, ids: torch.Tensor, chunk: int, bar=None) -> torch.Tensor:
    """Per-target NLL [n - 1] (target t predicted from tokens < t), feeding ``chunk`` tokens per forward."""
    from fastdecode.decoding import hf_cache as kv
    cache, out, n = kv.new_cache(model), [], ids.shape[1]
    for a in range(0, n, chunk):
        logits = kv.forward(model, ids[:, a:a + chunk], cache)[0]  # [c, V]
        targets = ids[0, a + 1:a + chunk + 1]
        lp = torch.log_softmax(logits[:targets.shape[0]].float(), -1)
        out.append(-lp.gather(-1, targets[:, None])[:, 0])
        if bar is not None:
            bar.update(logits.shape[0])
    return torch.cat(out).cpu()


def _nll_sliding(model, ids: torch.Tensor, window: int, stride: int, batch: int, bar=None) -> torch.Tensor:
    """Per-target NLL [n - 1]; every window is a fresh forward at positions 0..window-1 (no cache)."""
    n = ids.shape[1]
    nll = torch.full((n - 1,), float("nan"))
    ends = list(range(min(window, n - 1), n - 1, stride)) + [n - 1]
    ends = sorted(set(ends))
    jobs, prev = [], 0  # (start, end, first new target) ; targets are ids[t] for t in (prev, end]
    for e in ends:
        jobs.append((max(0, e - window), e, prev + 1))
        prev = e
    for i in range(0, len(jobs), batch):
        group = jobs[i:i + batch]
        width = group[0][1] - group[0][0]
        same = [j for j in group if j[1] - j[0] == width]
        rest = [j for j in group if j[1] - j[0] != width]
        for part in (same, *([r] for r in rest)):
            if not part:
                continue
            x = torch.stack([ids[0, a:e] for a, e, _ in part])  # [b, w]
            keep = max(e - first + 1 for _, e, first in part)  # only the newly scored positions
            logits = model(input_ids=x, use_cache=False, logits_to_keep=keep).logits  # [b, keep, V]
            w = x.shape[1]
            for row, (a, e, first) in enumerate(part):
                t = torch.arange(first, e + 1, device=ids.device)  # targets
                lp = torch.log_softmax(logits[row, t - 1 - a - (w - keep)].float(), -1)
                nll[first - 1:e] = -lp.gather(-1, ids[0, t][:, None])[:, 0].cpu()
        if bar is not None:
            bar.update(sum(j[1] - j[2] + 1 for j in group))
    return nll


def perplexity(model, corpus: list[int], args, device) -> dict:
    from tqdm.auto import tqdm

    from fastdecode.attention import LambdaAttention, lambda_attention
    n = max(args.lengths)
    ids = torch.tensor([corpus[:n]], device=device)
    out = {}
    with torch.inference_mode(), tqdm(total=4 * (n - 1), desc="perplexity", unit="tok") as bar:
        out["vanilla"] = _nll_streaming(model, ids, 1024, bar)
        with lambda_attention(model, LambdaAttention(args.window, args.num_global)):
            out["lambda"] = _nll_streaming(model, ids, args.window, bar)
        with lambda_attention(model, LambdaAttention(args.window, 0)):
            out["window_only"] = _nll_streaming(model, ids, args.window, bar)
        out["sliding"] = _nll_sliding(model, ids, args.window, args.sw_stride, 64 if device.type == "cuda" else 8, bar)
    edges = [0, 256, 512] + [b for b in (1024, 2048, 4096, 8192, 16384, 32768, 65536) if b < n] + [n]
    edges = sorted(set(e for e in edges if e <= n))
    res = {"edges": edges, "buckets": {}, "by_length": {}}
    for m, nll in out.items():
        res["buckets"][m] = [math.exp(float(nll[a:b - 1].mean())) if b - 1 > a else None
                             for a, b in zip(edges[:-1], edges[1:])]
        res["by_length"][m] = {L: math.exp(float(nll[:L - 1].mean())) for L in args.lengths}
    ref = res["by_length"]["sliding"]
    res["lambda_over_sliding"] = {L: res["by_length"]["lambda"][L] / ref[L] for L in args.lengths}
    last = (edges[-2], edges[-1])
    res["last_bucket"] = {m: res["buckets"][m][-1] for m in out}
    res["goal_within_10pct"] = bool(res["last_bucket"]["lambda"] <= 1.10 * res["last_bucket"]["sliding"])
    res["last_bucket_range"] = last
    return res


# -- 2. passkey ------------------------------------------------------------------------------------
def _score_and_decode(model, ctx: torch.Tensor, cands: list[list[int]], chunk: int) -> tuple[list[float], list[int]]:
    """Log-likelihood of each candidate continuation of ctx [1, n], and a greedy decode as long as cands[0]."""
    from fastdecode.decoding import hf_cache as kv
    cache = kv.new_cache(model)
    for a in range(0, ctx.shape[1], chunk):
        last = kv.forward(model, ctx[:, a:a + chunk], cache, logits_to_keep=1)[0, -1]
    n = kv.cache_length(cache)
    scores = []
    for c in cands:
        x = torch.tensor([c], device=ctx.device)
        logits = torch.cat([last[None], kv.forward(model, x[:, :-1], cache)[0]]) if len(c) > 1 else last[None]
        lp = torch.log_softmax(logits.float(), -1)
        scores.append(float(lp.gather(-1, x[0][:, None]).sum()))
        kv.crop(cache, n)
    greedy, logits = [], last
    for _ in range(len(cands[0])):
        greedy.append(int(logits.argmax()))
        logits = kv.forward(model, torch.tensor([[greedy[-1]]], device=ctx.device), cache, logits_to_keep=1)[0, -1]
    return scores, greedy


def passkey(model, tok, corpus: list[int], args, device) -> dict:
    from tqdm.auto import tqdm

    from fastdecode.attention import LambdaAttention, lambda_attention
    rng = random.Random(0)
    question = tok("\n\nassert key ==")["input_ids"]
    res = {m: {} for m in ("vanilla", "lambda", "window_only")}
    cfgs = {"lambda": LambdaAttention(args.window, args.num_global), "window_only": LambdaAttention(args.window, 0)}
    trials = [[rng.randrange(10000, 100000) for _ in range(10)] for _ in range(args.passkey_trials)]
    with torch.inference_mode(), tqdm(total=3 * len(args.passkey_lengths) * len(trials), desc="passkey") as bar:
        for L in args.passkey_lengths:
            for m in res:
                ranked, exact = 0, 0
                for i, keys in enumerate(trials):
                    head = tok(f"key = {keys[0]}\n")["input_ids"]
                    off = 1000 * i
                    fill = corpus[off:off + max(0, L - len(head) - len(question))]
                    ctx = torch.tensor([head + fill + question], device=device)
                    cands = [tok(f" {k}")["input_ids"] for k in keys]
                    if m == "vanilla":
                        scores, greedy = _score_and_decode(model, ctx, cands, 1024)
                    else:
                        with lambda_attention(model, cfgs[m]):
                            scores, greedy = _score_and_decode(model, ctx, cands, args.window)
                    ranked += int(max(range(len(scores)), key=scores.__getitem__) == 0)
                    exact += int(greedy == cands[0])
                    bar.update(1)
                res[m][L] = {"rank1": ranked / len(trials), "exact": exact / len(trials)}
    return res


# -- 3. decode speed and memory --------------------------------------------------------------------
def _decode_run(model, ids: torch.Tensor, steps: int, chunk: int) -> dict:
    from fastdecode.decoding import hf_cache as kv
    dev = ids.device
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    cache = kv.new_cache(model)
    for a in range(0, ids.shape[1], chunk):
        logits = kv.forward(model, ids[:, a:a + chunk], cache, logits_to_keep=1)[0, -1]
    _sync(dev)
    if cuda:
        prefill_peak = torch.cuda.max_memory_allocated(dev) - base
        torch.cuda.reset_peak_memory_stats(dev)
        decode_base = torch.cuda.memory_allocated(dev) - base
    times = []
    for _ in range(steps):
        x = logits.argmax()[None, None]
        t0 = time.perf_counter()
        logits = kv.forward(model, x, cache, logits_to_keep=1)[0, -1]
        _sync(dev)
        times.append(time.perf_counter() - t0)
    keys = [layer.keys for layer in cache.layers if getattr(layer, "keys", None) is not None]
    out = {
        "tokens_per_s": 1.0 / statistics.median(times[1:] or times),
        "ms_per_token": 1000 * statistics.median(times[1:] or times),
        "cache_bytes": 2 * sum(k.numel() * k.element_size() for k in keys),
        "cache_tokens": max(k.shape[-2] for k in keys),
    }
    if cuda:
        out["prefill_peak_bytes"] = prefill_peak
        out["decode_peak_bytes"] = torch.cuda.max_memory_allocated(dev) - base
        out["decode_start_bytes"] = decode_base
    return out


def decode_speed(model, corpus: list[int], args, device) -> dict:
    from tqdm.auto import tqdm

    from fastdecode.attention import LambdaAttention, lambda_attention
    cfgs = {"lambda": LambdaAttention(args.window, args.num_global)}
    if device.type == "cuda":  # the same attention through the PyTorch path instead of the Triton kernel
        cfgs["lambda_torch"] = LambdaAttention(args.window, args.num_global, decode_kernel=False)
    res = {"vanilla": {}, **{m: {} for m in cfgs}}
    with torch.inference_mode():
        _decode_run(model, torch.tensor([corpus[:64]], device=device), 4, 64)  # warm-up (CUDA init)
        for cfg in cfgs.values():  # warm-up (Triton compilation)
            with lambda_attention(model, cfg):
                _decode_run(model, torch.tensor([corpus[:2 * args.window]], device=device), 4, args.window)
        for L in tqdm(args.lengths, desc="decode"):
            ids = torch.tensor([corpus[:L]], device=device)
            res["vanilla"][L] = _decode_run(model, ids, args.decode_tokens, 1024)
            for m, cfg in cfgs.items():
                with lambda_attention(model, cfg):
                    res[m][L] = _decode_run(model, ids, args.decode_tokens, args.window)
    return res


# -- report ----------------------------------------------------------------------------------------
def _table(results: dict) -> str:
    lines = []
    if "perplexity" in results:
        p = results["perplexity"]
        lines += ["| context | " + " | ".join(METHODS) + " | lambda / sliding |", "|---|" + "---|" * (len(METHODS) + 1)]
        for L in results["args"]["lengths"]:
            row = [f"{p['by_length'][m][L]:.2f}" for m in METHODS]
            lines.append(f"| {L} | " + " | ".join(row) + f" | {p['lambda_over_sliding'][L]:.3f} |")
        a, b = p["last_bucket_range"]
        lines += ["", f"last bucket [{a}, {b}) perplexity: " + ", ".join(
            f"{m} {p['last_bucket'][m]:.2f}" for m in METHODS) + f"; goal (lambda within 10% of sliding): "
            f"{'met' if p['goal_within_10pct'] else 'NOT met'}", ""]
    if "passkey" in results:
        pk = results["passkey"]
        lengths = sorted(next(iter(pk.values())))
        lines += ["| passkey context | " + " | ".join(f"{m} rank1 / exact" for m in pk) + " |",
                  "|---|" + "---|" * len(pk)]
        for L in lengths:
            lines.append(f"| {L} | " + " | ".join(f"{pk[m][L]['rank1']:.2f} / {pk[m][L]['exact']:.2f}" for m in pk) + " |")
        lines.append("")
    if "decode" in results:
        d = results["decode"]
        cuda = "decode_peak_bytes" in next(iter(d["vanilla"].values()))
        torch_path = "lambda_torch" in d
        hdr = "| context | vanilla tok/s | lambda tok/s |" + (" lambda (PyTorch path) tok/s |" if torch_path else "")
        hdr += " vanilla cache MiB | lambda cache MiB |"
        hdr += " vanilla peak MiB | lambda peak MiB |" if cuda else ""
        lines += [hdr, "|---" * (hdr.count("|") - 1) + "|"]
        for L in sorted(d["vanilla"]):
            v, lam = d["vanilla"][L], d["lambda"][L]
            row = f"| {L} | {v['tokens_per_s']:.1f} | {lam['tokens_per_s']:.1f} |"
            row += f" {d['lambda_torch'][L]['tokens_per_s']:.1f} |" if torch_path else ""
            row += f" {v['cache_bytes'] / 2**20:.1f} | {lam['cache_bytes'] / 2**20:.1f} |"
            if cuda:
                row += (f" {max(v['prefill_peak_bytes'], v['decode_peak_bytes']) / 2**20:.1f} |"
                        f" {max(lam['prefill_peak_bytes'], lam['decode_peak_bytes']) / 2**20:.1f} |")
            lines.append(row)
    return "\n".join(lines)


def _plots(results: dict, stem: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    files = []
    if "perplexity" in results:
        p = results["perplexity"]
        fig, ax = plt.subplots(figsize=(7, 4))
        mids = [(a + b) / 2 for a, b in zip(p["edges"][:-1], p["edges"][1:])]
        for m in METHODS:
            ax.plot(mids, p["buckets"][m], marker="o", label=m)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.axvline(results["args"]["window"], color="grey", ls=":", lw=1)
        ax.set_xlabel("token position (bucket centre)")
        ax.set_ylabel("perplexity")
        ax.set_title("code-pair target on stdlib text: perplexity vs position")
        ax.legend()
        fig.tight_layout()
        fig.savefig(f"{stem}_ppl.png", dpi=120)
        files.append(f"{stem}_ppl.png")
        plt.close(fig)
    if "decode" in results:
        d = results["decode"]
        Ls = sorted(d["vanilla"])
        cuda = "decode_peak_bytes" in d["vanilla"][Ls[0]]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for m in d:
            axes[0].plot(Ls, [d[m][L]["ms_per_token"] for L in Ls], marker="o", label=m)
            key = "decode_peak_bytes" if cuda else "cache_bytes"
            axes[1].plot(Ls, [d[m][L][key] / 2**20 for L in Ls], marker="o", label=m)
        axes[0].set_ylabel("ms per decoded token")
        axes[1].set_ylabel("peak memory above weights (MiB)" if cuda else "KV cache (MiB)")
        for ax in axes:
            ax.set_xscale("log", base=2)
            ax.set_xlabel("context length (tokens)")
            ax.legend()
        fig.suptitle(f"decode on {results['device']}: vanilla vs Lambda")
        fig.tight_layout()
        fig.savefig(f"{stem}_decode.png", dpi=120)
        files.append(f"{stem}_decode.png")
        plt.close(fig)
    return files


def run(args) -> int:
    from fastdecode.models import load_pair
    from bench.common import stdlib_corpus

    quick = args.quick
    out = args.out = Path(args.out) if args.out is not None else (QUICK_DIR if quick else RESULTS_DIR)
    args.lengths = _lengths(args.lengths, QUICK_LENGTHS if quick else DEFAULT_LENGTHS)
    device = torch.device(args.device)
    args.sw_stride = args.sw_stride or (8 if device.type == "cuda" else 64)
    args.passkey_lengths = _lengths(args.passkey_lengths, (128, 600) if quick else (128, 1024, 4096, 16384))
    args.passkey_trials = args.passkey_trials or (2 if quick else 10)
    args.decode_tokens = args.decode_tokens or (8 if quick else 64)
    skip = {s for s in args.skip.split(",") if s}
    if bad := skip - {"ppl", "passkey", "decode"}:
        raise ValueError(f"--skip takes ppl, passkey, decode; got {sorted(bad)}")
    target, _, tok = load_pair(device=device)
    corpus = stdlib_corpus(tok, max(args.lengths + args.passkey_lengths) + 1000 * args.passkey_trials)
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
               "args": {k: v for k, v in vars(args).items() if not k.startswith("_") and not callable(v)},
               "torch": torch.__version__}
    t0 = time.perf_counter()
    if "ppl" not in skip:
        results["perplexity"] = perplexity(target, corpus, args, device)
    if "passkey" not in skip:
        results["passkey"] = passkey(target, tok, corpus, args, device)
    if "decode" not in skip:
        results["decode"] = decode_speed(target, corpus, args, device)
    results["wall_s"] = time.perf_counter() - t0
    results["table"] = _table(results)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / ("long_context_quick" if quick else "long_context")
    results["plots"] = _plots(results, stem)
    Path(f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
    print(results["table"])
    print(f"wrote {stem}.json and {', '.join(results['plots'])} ({results['wall_s']:.0f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return script_main(__doc__, add_arguments, run, argv)


if __name__ == "__main__":
    sys.exit(main())
