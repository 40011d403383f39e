"""Single-draft speculative decoding (docs/algorithms.md section 1), with an adaptive draft length.

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

import torch

from ..config import SamplingConfig, SpeculativeConfig
from ..stats import DecodeStats
from . import hf_cache as kv
from .stream import TokenStream
from .policy import policy_for
from .step import CHAIN_VERIFIERS, draft_tokens, verify_step


def decode(target, draft, stream: TokenStream, sampling: SamplingConfig, spec: SpeculativeConfig,
           generator, stats: DecodeStats, progress=None) -> None:
    tcache, dcache = kv.new_cache(target), kv.new_cache(draft)
    verifier = CHAIN_VERIFIERS[spec.verifier]
    policy = policy_for(spec, target, draft, "speculative", "dynamic", sampling.greedy)
    threshold = spec.confidence_threshold if spec.adaptive else 0.0
    empty = torch.empty(0, dtype=torch.long, device=kv.device(target))
    while not stream.done:
        gamma = policy.next_length(stream.remaining)
        drafts, q = draft_tokens(draft, dcache, stream.tokens, gamma, sampling, generator, stats, threshold,
                                process=stream.process) \
            if gamma > 0 else (empty, None)
        base = stream.length
        v = verify_step(target, tcache, stream.tokens, drafts, q, sampling, verifier, generator, stats,
                        process=stream.process)
        kept = stream.append(v.tokens)
        if progress is not None:
            progress.update(kept)
        kv.crop(dcache, min(kv.cache_length(dcache), base + v.n_accepted))
        policy.update(v.n_draft, v.n_accepted)
    policy.report(stats)
