"""One chain step of speculative decoding on the dynamic engine: the draft proposes, the target scores
every token it has not seen plus the drafts in ONE forward, the chain verifier decides, the target's
cache is cropped back to the accepted text. ``speculative``, ``prompt_lookup`` and the large-model
segments of ``entropy_switch`` all run this step; they differ only in where the drafts come from and
in what they do with the emitted tokens. (The static engine's step is ``static.decode_speculative``.)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import SamplingConfig
from ..stats import DecodeStats
from ..verification.block import verify_block
from ..verification.token import verify_chain
from . import hf_cache as kv
from . import sampling as sm

CHAIN_VERIFIERS = {"token": verify_chain, "block": verify_block}


def draft_tokens(draft, dcache, tokens: list[int], gamma: int, sampling: SamplingConfig, generator,
                 stats: DecodeStats, confidence_threshold: float = 0.0, process=None):
    """Up to ``gamma`` draft tokens after ``tokens`` (the draft first catches up on what its cache lacks).
    Drafting stops early once the draft's top probability (softmax of its raw logits) falls below
    ``confidence_threshold`` (0: never). ``process``: the stream's logits processors
    (:meth:`TokenStream.process`), applied to each row with the drafts before it. Returns (drafts [n] long,
    q [n, V] float32: the rows they were sampled from)."""
    device = kv.device(draft)
    drafts, qs = [], []
    pending = tokens[kv.cache_length(dcache):]
    for i in range(gamma):
        logits = kv.forward(draft, torch.tensor([pending], device=device), dcache, logits_to_keep=1)[0]  # [1, V]
        stats.draft_calls += 1
        q = sm.probs(logits if process is None else process(logits, drafts), sampling)
        x = int(q.argmax(-1)[0]) if sampling.greedy else int(sm.sample(q, generator)[0])
        drafts.append(x)
        qs.append(q)
        pending = [x]
        if confidence_threshold > 0 and i + 1 < gamma and float(sm.confidence(logits)[0]) < confidence_threshold:
            break
    if not drafts:
        return torch.empty(0, dtype=torch.long, device=device), None
    return torch.tensor(drafts, device=device), torch.cat(qs)


@dataclass
class Verified:
    n_draft: int
    n_accepted: int
    tokens: list[int]        # the accepted drafts, then the residual or bonus token
    logits: torch.Tensor     # [n_draft + 1, V] the target's logits after each prefix
    fed: int                 # tokens the target forward took (unseen committed tokens + drafts)


def verify_step(target, tcache, tokens: list[int], drafts: torch.Tensor, q: torch.Tensor | None,
                sampling: SamplingConfig, verifier, generator, stats: DecodeStats, process=None) -> Verified:
    """Score and verify ``drafts`` [n] after ``tokens``; q [n, V] (None: point-mass drafts, q one-hot).
    No drafts: a plain decoding step. ``process``: the stream's logits processors, applied to each row with
    the drafts before it (the returned ``logits`` are the raw ones). Records the step in ``stats``; crops
    ``tcache`` to the accepted text minus the newest token (which the next step feeds)."""
    base, n_draft = len(tokens), drafts.shape[0]
    start = kv.cache_length(tcache)
    ids = torch.cat([torch.tensor(tokens[start:], device=drafts.device), drafts])[None]
    logits = kv.forward(target, ids, tcache, logits_to_keep=n_draft + 1)[0]  # [n_draft + 1, V]
    stats.target_calls += 1
    scores = logits if process is None else process(logits, drafts)
    if n_draft:
        p = sm.probs(scores, sampling)
        if q is None:
            q = sm.one_hot(drafts, p.shape[-1])
        n_acc, nxt = verifier(p, q, drafts, generator)
    else:
        n_acc, nxt = 0, sm.next_token(scores, sampling, generator)
    stats.record_step(n_draft, n_acc)
    kv.crop(tcache, base + n_acc)
    return Verified(n_draft, n_acc, drafts[:n_acc].tolist() + [nxt], logits, ids.shape[1])
