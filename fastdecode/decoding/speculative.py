"""Single-draft speculative decoding (algorithms.md section 1), with an adaptive draft length.

One step:
1. the draft catches up on the tokens its cache has not seen and proposes up to gamma tokens
   x_1..x_gamma, each sampled from exactly the q_i that the verifier later uses;
2. the target scores everything it has not seen plus the drafts in ONE forward pass (p_1..p_gamma+1);
3. the chain verifier ("token": token-by-token rule, "block": block verification) returns how many
   drafts are accepted and the next token (residual or bonus);
4. both caches are cropped back to the accepted text (never recomputing the prompt).

Adaptive draft length (``SpeculativeConfig.adaptive``): gamma grows by 2 after a fully accepted draft
and shrinks by 1 otherwise, and drafting stops early once the draft's top probability (softmax of its
raw logits) falls below ``confidence_threshold``. Both only decide how many tokens are drafted, from
the draft model's own outputs, so every emitted token is still exactly p-distributed.
"""
from __future__ import annotations

import importlib

import torch

from .. import kernels
from ..config import SamplingConfig, SpeculativeConfig
from ..stats import DecodeStats
from ..verification.common import sample
from . import cache as kv
from .common import TokenStream
from .policy import DraftLengthPolicy, cost_ratio

CHAIN_VERIFIERS = {
    "token": ("fastdecode.verification.speculative", "verify_chain"),
    "block": ("fastdecode.verification.block", "verify_block"),
}


def chain_verifier(name: str):
    mod, fn = CHAIN_VERIFIERS[name]
    return getattr(importlib.import_module(mod), fn)


def draft_tokens(draft, dcache, stream: TokenStream, gamma: int, sampling: SamplingConfig,
                 spec: SpeculativeConfig, generator, stats: DecodeStats):
    """Propose up to ``gamma`` tokens. Returns (drafts [n] long, q [n, V] float32)."""
    device = kv.device(draft)
    drafts, qs = [], []
    pending = stream.tokens[kv.cache_length(dcache):]
    for i in range(gamma):
        ids = torch.tensor([pending], device=device)
        logits = kv.forward(draft, ids, dcache, logits_to_keep=1)[0]  # [1, V]
        stats.draft_calls += 1
        q = kernels.probs(logits, sampling.temperature, sampling.top_k, sampling.top_p)
        x = int(q.argmax(-1)[0]) if sampling.greedy else int(sample(q, generator)[0])
        drafts.append(x)
        qs.append(q)
        pending = [x]
        if spec.adaptive and i + 1 < gamma and spec.confidence_threshold > 0:
            if float(torch.softmax(logits, -1).max()) < spec.confidence_threshold:
                break
    if not drafts:
        return torch.empty(0, dtype=torch.long, device=device), None
    return torch.tensor(drafts, device=device), torch.cat(qs)


def decode(target, draft, stream: TokenStream, sampling: SamplingConfig, spec: SpeculativeConfig,
           generator, stats: DecodeStats, progress=None) -> None:
    device = kv.device(target)
    tcache, dcache = kv.new_cache(target), kv.new_cache(draft)
    verify_chain = chain_verifier(spec.verifier)
    policy = DraftLengthPolicy(spec, cost_ratio(target, draft))
    while not stream.done:
        g = policy.next_length(stream.remaining)
        drafts, q = draft_tokens(draft, dcache, stream, g, sampling, spec, generator, stats) if g > 0 else (
            torch.empty(0, dtype=torch.long, device=device), None)
        n_draft = drafts.shape[0]

        start = kv.cache_length(tcache)
        ids = torch.cat([torch.tensor(stream.tokens[start:], device=device), drafts])[None]
        logits = kv.forward(target, ids, tcache, logits_to_keep=n_draft + 1)[0]  # [n_draft + 1, V]
        stats.target_calls += 1
        p = kernels.probs(logits, sampling.temperature, sampling.top_k, sampling.top_p)
        if n_draft:
            n_acc, nxt = verify_chain(p, q, drafts, generator)
        else:
            n_acc, nxt = 0, int(p.argmax(-1)[0]) if sampling.greedy else int(sample(p, generator)[0])
        stats.record_step(n_draft, n_acc)

        base = stream.length
        kept = stream.append(drafts[:n_acc].tolist() + [nxt])
        if progress is not None:
            progress.update(kept)
        # caches keep the accepted text minus the newest token (fed at the start of the next step)
        kv.crop(tcache, base + n_acc)
        kv.crop(dcache, min(kv.cache_length(dcache), base + n_acc))
        policy.update(n_draft, n_acc)
    if policy.plain_steps:
        stats.extra["plain_steps"] = policy.plain_steps
