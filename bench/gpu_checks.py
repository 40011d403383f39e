"""Correctness of the static engine where it differs from the CPU: CUDA graphs and the fused verify kernel.

1. Greedy, float32, code pair: fastdecode (dynamic and static engine, every single-draft variant and two
   multi-draft trees) equals HF `generate` token for token; with Lambda attention (window 32, past it),
   the static engine's ring equals the dynamic engine token for token.
2. The same seed gives the same tokens twice on the static engine (recorded graphs replay deterministically).
3. Sampling law on the GPU: the first two tokens of 1200 seeded static-engine runs of a tiny pair (V = 6)
   against the exact law (chi-square), plus a broken rule (accept every draft) that must fail; the token
   verifier's runs go through the recorded step (draft chain and verification replayed as CUDA graphs).
4. Sliding windows on the static engine's recorded forwards: tiny random Mistral (every layer windowed) and
   Gemma-2 (windowed and full layers), window 8, texts past it: greedy = HF for single rows and a ragged
   batch of 3 (the slot key positions are written inside the recorded graphs); and with the windowed layers in
   rings (the prefill piece shrunk so that they wrap): greedy = HF for plain, speculative and tree steps.
5. compile=True (inductor kernels in the engine's own CUDA graphs): greedy = HF for plain, speculative and
   multi-draft decoding, float32, and the same seed twice gives the same tokens.

Usage: python bench/gpu_checks.py [--device cuda] [--checks greedy,windows,law,compiled] [--out FILE.json].
Exit status 1 if a check fails.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # bench.common, this checkout's fastdecode, the tests' helpers

import fastdecode  # noqa: E402
from bench.common import stdlib_prompts  # noqa: E402
from tiny_models import draft_of, tiny_llama, tiny_lm  # noqa: E402
from batches import left_pad  # noqa: E402
from distribution import chi_square_pvalue, exact_law, sample_law  # noqa: E402
from fastdecode.decoding import static_step, static_windows  # noqa: E402

VARIANTS = [
    dict(method="autoregressive"),
    dict(method="speculative"),
    dict(method="speculative", draft_length=3, adaptive_draft=False),
    dict(method="speculative", draft_length=4, adaptive_draft=False),
    dict(method="speculative", draft_length=7, adaptive_draft=False, verifier="block"),
    dict(method="prompt_lookup"),  # no draft model
    dict(method="multi_draft", num_drafts=2, draft_length=3),
    dict(method="multi_draft", num_drafts=4, draft_length=2, verifier="spectr"),
]
LAMBDA_VARIANTS = [dict(method="autoregressive"), dict(method="speculative", draft_length=4, adaptive_draft=False)]


def _greedy_equal(target, draft, prompts, device, new: int, both=None, **kw) -> dict:
    """How many of the prompts give HF generate's greedy tokens with fastdecode (``kw``), and the seconds.
    ``both``: settings given to HF generate and fastdecode alike (logits processors)."""
    same, t0, both = 0, time.perf_counter(), both or {}
    for pr in prompts:
        ids = torch.tensor([pr], device=device)
        ref = target.generate(ids, max_new_tokens=new, do_sample=False, **both)
        got = fastdecode.generate(target, ids, draft=draft, temperature=0, max_new_tokens=new, **both,
                                  **kw).sequences
        same += bool(torch.equal(ref, got))
    return dict(equal=same, of=len(prompts), seconds=round(time.perf_counter() - t0, 2), ok=same == len(prompts))


def _seed_repeats(target, draft, ids, new: int, **kw) -> bool:
    """The same seed gives the same sampled tokens twice (T = 1, speculative, static engine)."""
    kw = dict(draft=draft, method="speculative", temperature=1.0, max_new_tokens=new, cache_implementation="static",
              **kw)
    return bool(torch.equal(fastdecode.generate(target, ids, seed=7, **kw).sequences,
                            fastdecode.generate(target, ids, seed=7, **kw).sequences))


def _static_equals_dynamic(check: str, target, draft, prompts, device, new: int, **kw) -> dict:
    """How many of the prompts give the dynamic engine's greedy tokens on the static engine (``kw``)."""
    same, t0 = 0, time.perf_counter()
    for pr in prompts:
        ids = torch.tensor([pr], device=device)
        common = dict(draft=draft, temperature=0, max_new_tokens=new, **kw)
        ref = fastdecode.generate(target, ids, **common).sequences
        same += bool(torch.equal(ref, fastdecode.generate(target, ids, cache_implementation="static",
                                                          **common).sequences))
    row = dict(check=check, kwargs={k: v for k, v in kw.items() if k != "lambda_attention"}, equal=same,
               of=len(prompts), seconds=round(time.perf_counter() - t0, 2), ok=same == len(prompts))
    print(row, flush=True)
    return row


def _scores_check(target, draft, prompt: list[int], device, new: int) -> dict:
    """output_scores on the static engine (speculative, with a repetition penalty) against HF generate's."""
    ids = torch.tensor([prompt], device=device)
    hf = target.generate(ids, max_new_tokens=new, do_sample=False, repetition_penalty=1.3, output_scores=True,
                         return_dict_in_generate=True)
    got = fastdecode.generate(target, ids, draft=draft, temperature=0, max_new_tokens=new, repetition_penalty=1.3,
                              cache_implementation="static", output_scores=True)
    same = bool(torch.equal(got.sequences, hf.sequences))
    diff = float((torch.stack(got.scores, 1) - torch.stack(hf.scores, 1)).abs().max()) if same else float("nan")
    row = dict(check="output_scores == HF's (static, speculative)", same_tokens=same, max_abs_diff=diff,
               ok=same and diff < 1e-3)
    print(row, flush=True)
    return row


def greedy_checks(device, n_prompts: int, new: int) -> list[dict]:
    target, draft, tok = fastdecode.load_pair(device=device, dtype=torch.float32)
    prompts = stdlib_prompts(tok, n_prompts, 64)
    out = []
    for kw in VARIANTS:
        for engine in ("dynamic", "static"):
            d = None if kw["method"] == "prompt_lookup" else draft
            out.append(dict(check="greedy == HF", engine=engine, kwargs=kw,
                            **_greedy_equal(target, d, prompts, device, new, cache_implementation=engine, **kw)))
            print(out[-1], flush=True)
    procs = dict(repetition_penalty=1.3, min_new_tokens=new // 2, no_repeat_ngram_size=4)   # HF processors, per row
    for kw in (VARIANTS[0], VARIANTS[1], VARIANTS[6]):
        for engine in ("dynamic", "static"):
            out.append(dict(check="with logits processors: greedy == HF", engine=engine,
                            kwargs=kw, **_greedy_equal(target, draft, prompts, device, new, both=procs,
                                                       cache_implementation=engine, **kw)))
            print(out[-1], flush=True)
    dense = dict(repetition_penalty=1.3, min_new_tokens=new // 2)   # applied inside the recorded step's graphs
    for kw in (VARIANTS[1], VARIANTS[3]):
        out.append(dict(check="with dense processors (recorded step): greedy == HF", engine="static", kwargs=kw,
                        **_greedy_equal(target, draft, prompts, device, new, both=dense,
                                        cache_implementation="static", **kw)))
        print(out[-1], flush=True)
    out.append(_scores_check(target, draft, prompts[0], device, new))
    cfg = fastdecode.LambdaAttention(window=32, num_global=4, max_rollback=8)
    for kw in LAMBDA_VARIANTS:
        out.append(_static_equals_dynamic("Lambda: static == dynamic", target, draft, prompts, device, new,
                                          lambda_attention=cfg, **kw))
    for kw in (dict(), dict(speculate_when_large=True)):   # lossy: the static engine against the dynamic one
        out.append(_static_equals_dynamic("entropy_switch: static == dynamic", target, draft, prompts, device, new,
                                          method="entropy_switch", **kw))
    out.append(dict(check="same seed, same tokens (static, T=1)",
                    ok=_seed_repeats(target, draft, torch.tensor([prompts[0]], device=device), new)))
    print(out[-1], flush=True)
    return out


def law_checks(device, runs: int) -> list[dict]:
    prompt = [1, 2, 3, 4]
    target, draft = tiny_llama(1), tiny_llama(2, scale=3.0)
    law = exact_law(target, prompt, 2)
    target, draft = target.to(device), draft.to(device)
    out = []
    for verifier in ("token", "block"):
        t0 = time.perf_counter()
        counts = sample_law(target, draft, prompt, 2, runs, max_new_tokens=3, temperature=1.0, method="speculative",
                            draft_length=2, adaptive_draft=False, verifier=verifier, cache_implementation="static")
        pv = chi_square_pvalue(counts, law)
        out.append(dict(check=f"2-token law, static {verifier} verifier", p_value=pv, ok=pv > 1e-3,
                        seconds=round(time.perf_counter() - t0, 2)))
        print(out[-1], flush=True)
    orig = static_step.accepted_count   # (the recorded verification's rule, and the unrecorded one's)
    static_step.accepted_count = lambda u, px, qx: torch.full((), u.shape[0], device=u.device)   # accept every draft
    for m in (target, draft):   # the runners' graphs recorded the right rule: record afresh with the broken one
        m.__dict__.pop("_fastdecode_static", None)
    try:
        counts = sample_law(target, draft, prompt, 2, runs, max_new_tokens=3, temperature=1.0, method="speculative",
                            draft_length=2, adaptive_draft=False, cache_implementation="static")
    finally:
        static_step.accepted_count = orig
    pv = chi_square_pvalue(counts, law)
    out.append(dict(check="broken rule (accept all) is caught", p_value=pv, ok=pv < 1e-3))
    print(out[-1], flush=True)
    return out


def window_checks(device) -> list[dict]:
    out = []
    for model_type in ("mistral", "gemma2"):
        target = tiny_lm(model_type, 2, seed=1, sliding_window=8).to(device)
        draft = draft_of(target).to(device)
        prompts = [[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [40, 41, 42, 43, 44], [90, 91, 92, 90, 91, 92, 90]]
        t0, ok = time.perf_counter(), True
        for kw in (dict(method="autoregressive"), dict(method="speculative", draft_length=3, adaptive_draft=False),
                   dict(method="multi_draft", num_drafts=2, draft_length=3)):
            d = None if kw["method"] == "autoregressive" else draft
            ids = torch.tensor(prompts[:1], device=device)   # a single row: the first prompt
            ref = target.generate(ids, max_new_tokens=24, do_sample=False)
            got = fastdecode.generate(target, ids, draft=d, temperature=0, max_new_tokens=24, eos_token_id=[],
                                      cache_implementation="static", **kw).sequences
            ok &= bool(torch.equal(ref, got))
            if kw["method"] == "multi_draft":
                continue
            ids, mask = left_pad(prompts)
            ids, mask = ids.to(device), mask.to(device)
            ref = target.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, pad_token_id=0)
            got = fastdecode.generate(target, ids, attention_mask=mask, draft=d, temperature=0, max_new_tokens=24,
                                      pad_token_id=0, eos_token_id=[], cache_implementation="static",
                                      compile="cudagraphs" if device.type == "cuda" else None, **kw).sequences
            ok &= bool(torch.equal(ref, got))
        out.append(dict(check=f"sliding window ({model_type}), static recorded: greedy == HF", ok=ok,
                        seconds=round(time.perf_counter() - t0, 2)))
        print(out[-1], flush=True)
        out.append(_ring_check(target, draft, prompts[0], model_type, device))
        print(out[-1], flush=True)
    return out


def _ring_check(target, draft, prompt: list[int], model_type: str, device) -> dict:
    """The windowed layers' rings (``static_windows``) in recorded forwards: the prefill piece shrunk to 4 tokens
    so that rings of 12-16 slots wrap several times in 48 new tokens; greedy == HF for the three recorded step
    kinds (plain, the recorded speculative step, the tree)."""
    t0, ok, piece = time.perf_counter(), True, static_windows.PREFILL_PIECE
    static_windows.PREFILL_PIECE = 4
    try:
        ids = torch.tensor([prompt], device=device)
        ref = target.generate(ids, max_new_tokens=48, do_sample=False)
        for kw in COMPILED:
            target.__dict__.pop("_fastdecode_static", None)   # a fresh runner, with a ring
            got = fastdecode.generate(target, ids, draft=None if kw["method"] == "autoregressive" else draft,
                                      temperature=0, max_new_tokens=48, eos_token_id=[], cache_implementation="static",
                                      **kw)
            ok &= bool(torch.equal(ref, got.sequences)) and target.__dict__["_fastdecode_static"].ring is not None
    finally:
        static_windows.PREFILL_PIECE = piece
        target.__dict__.pop("_fastdecode_static", None)
    return dict(check=f"sliding window ({model_type}) in rings, static recorded: greedy == HF", ok=ok,
                seconds=round(time.perf_counter() - t0, 2))


COMPILED = [dict(method="autoregressive"), dict(method="speculative", draft_length=3, adaptive_draft=False),
            dict(method="multi_draft", num_drafts=2, draft_length=3)]


def compiled_checks(device, n_prompts: int, new: int) -> list[dict]:
    target, draft, tok = fastdecode.load_pair(device=device, dtype=torch.float32)
    prompts = stdlib_prompts(tok, n_prompts, 64)
    out = []
    for kw in COMPILED:
        out.append(dict(check="compile=True: greedy == HF", kwargs=kw,
                        **_greedy_equal(target, draft, prompts, device, new, cache_implementation="static",
                                        compile=True, **kw)))
        print(out[-1], flush=True)
    out.append(dict(check="compile=True: same seed, same tokens (T=1)",
                    ok=_seed_repeats(target, draft, torch.tensor([prompts[0]], device=device), new, compile=True)))
    print(out[-1], flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=1200)
    ap.add_argument("--checks", default="greedy,windows,law,compiled")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    run = dict(greedy=lambda: greedy_checks(device, args.prompts, args.new_tokens), windows=lambda: window_checks(device),
               law=lambda: law_checks(device, args.runs),
               compiled=lambda: compiled_checks(device, args.prompts, args.new_tokens))
    rows = []
    for name in args.checks.split(","):
        rows += run[name]()
    bad = [r for r in rows if not r["ok"]]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} checks passed on {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=1, default=str))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
