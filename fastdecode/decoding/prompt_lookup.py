"""Prompt lookup (n-gram) speculative decoding: drafts copied from the prompt and the text generated so far.

One step:
1. :class:`NgramIndex` looks up the trailing n-gram of the text (n from ``max_matching_ngram_size``
   down to ``min_matching_ngram_size``, longest first) and proposes up to gamma tokens that followed
   its LATEST earlier occurrence;
2. no match: a plain decoding step (one target forward on the pending token, no draft; with a draft
   model, see below, the model drafts instead);
3. a match x_1..x_g: the target scores the pending tokens plus the drafts in ONE forward pass, and the
   chain verifier of ``speculative`` ("token" or "block") decides, with q_i = one-hot(x_i): the draft is
   a point mass, so the token rule accepts x_i with probability p_i(x_i) and the residual is p_i with
   x_i removed, renormalised. Every emitted token is exactly p-distributed; at temperature 0 the output
   equals plain greedy decoding token for token.
4. the target cache is cropped back to the accepted text.

With a draft model (``generate(..., method="prompt_lookup", draft=...)``) a step without an n-gram match
drafts with the model instead, exactly as ``speculative`` does (its q rows, its confidence stop at 0.4);
which source drafts depends only on the text so far, so the law is unchanged.

Adaptive draft length (``PromptLookupConfig.adaptive``), as in ``speculative``: gamma starts at
``prompt_lookup_num_tokens``, shrinks by 1 after a rejection and grows by 2 (up to
``prompt_lookup_num_tokens``) after a fully accepted draft. It depends only on past outcomes, so the
law of the output is unchanged.
"""
from __future__ import annotations

import torch

from ..config import DEFAULT_CONFIDENCE_THRESHOLD, PromptLookupConfig, SamplingConfig, SpeculativeConfig
from ..stats import DecodeStats
from . import hf_cache as kv
from .stream import TokenStream
from .policy import DraftLengthPolicy, policy_for
from .step import CHAIN_VERIFIERS, draft_tokens, verify_step


class NgramIndex:
    """Incremental index of a growing token list: for every n in [min_n, max_n], n-gram -> the end
    (exclusive) of its latest occurrence that is not the trailing one.

    ``propose(tokens, k)`` indexes the tokens added since the last call (O(max_n - min_n + 1) dict
    updates per token), then looks up the trailing n-gram, longest n first. The occurrence found ends
    before ``len(tokens)``, so at least one token follows it; the proposal copies what followed, and
    where the copy runs into the tail it continues from its own copied tokens (as LZ77 does: the text
    "a b a b" proposes "a b a b ..."), up to ``k`` tokens. The list may only grow between calls
    (``tokens`` is the caller's own list; rewriting earlier entries would leave the index stale).
    """

    def __init__(self, max_n: int, min_n: int = 1):
        if not (1 <= min_n <= max_n):
            raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        self.max_n, self.min_n = max_n, min_n
        self.tables: dict[int, dict[tuple, int]] = {n: {} for n in range(min_n, max_n + 1)}
        self.indexed = 0  # n-grams ending at positions <= indexed are in the tables

    def _index(self, tokens: list[int], upto: int) -> None:
        """Register every n-gram that ends at a position in (indexed, upto]."""
        for end in range(self.indexed + 1, upto + 1):
            for n, table in self.tables.items():
                if end >= n:
                    table[tuple(tokens[end - n:end])] = end
        self.indexed = max(self.indexed, upto)

    def match(self, tokens: list[int]) -> tuple[int, int] | None:
        """(n, end of the latest earlier occurrence of the trailing n-gram), longest n first; None: no match."""
        L = len(tokens)
        self._index(tokens, L - 1)  # every n-gram except the trailing one(s) ending at L
        for n in range(min(self.max_n, L - 1), self.min_n - 1, -1):
            end = self.tables[n].get(tuple(tokens[L - n:]))
            if end is not None:
                return n, end
        return None

    def propose(self, tokens: list[int], k: int) -> list[int]:
        """Up to ``k`` tokens that followed the latest earlier occurrence of the trailing n-gram ([] if none)."""
        if k < 1:
            return []
        m = self.match(tokens)
        if m is None:
            return []
        start = m[1]
        L = len(tokens)
        out = tokens[start:start + k]
        while len(out) < k:  # the copy reached the tail: continue from the copied tokens themselves
            out.append(out[start + len(out) - L])
        return out


def propose_reference(tokens: list[int], k: int, max_n: int, min_n: int = 1) -> list[int]:
    """The same proposal as :meth:`NgramIndex.propose`, by a plain backwards scan (tests' reference)."""
    L = len(tokens)
    for n in range(min(max_n, L - 1), min_n - 1, -1):
        tail = tokens[L - n:]
        for end in range(L - 1, n - 1, -1):
            if tokens[end - n:end] == tail:
                ext = list(tokens)
                while len(ext) < end + k:
                    ext.append(ext[len(ext) - (L - end)])
                return ext[end:end + k]
    return []


def length_policy(cfg: PromptLookupConfig, target=None, draft=None, *key) -> DraftLengthPolicy:
    """The speculative +2 / -1 rule from prompt_lookup_num_tokens down to 1, with the measured fallback if
    ``cfg.fallback`` says so (the estimated one never stops: an n-gram draft costs no forward); ``key``: see
    :func:`~fastdecode.decoding.policy.measured_switch`. ``target`` None: a row of a batch, without a fallback
    of its own (the batch decides plain or drafting steps for all its rows)."""
    spec = SpeculativeConfig(cfg.prompt_lookup_num_tokens, cfg.adaptive, cfg.prompt_lookup_num_tokens, 0.0,
                             cfg.verifier, "off" if target is None else cfg.fallback)
    # (draft None to policy_for: no size-based cost, whatever model drafts the steps without a match; the
    # draft model still tells the measured timings apart)
    return policy_for(spec, target, None, "prompt_lookup", id(draft), *key)


def decode(target, draft, stream: TokenStream, sampling: SamplingConfig, cfg: PromptLookupConfig, generator,
           stats: DecodeStats, progress=None) -> None:
    """Prompt lookup decoding; ``draft``: a draft model for the steps without an n-gram match (None: those
    steps are plain decoding steps)."""
    device = kv.device(target)
    tcache = kv.new_cache(target)
    dcache = kv.new_cache(draft) if draft is not None else None
    stats.extra.update(ngram_draft_steps=0, model_draft_steps=0)
    verifier = CHAIN_VERIFIERS[cfg.verifier]
    index = NgramIndex(cfg.max_matching_ngram_size, cfg.min_matching_ngram_size)
    threshold = DEFAULT_CONFIDENCE_THRESHOLD if cfg.adaptive else 0.0
    policy = length_policy(cfg, target, draft, "dynamic", sampling.greedy)
    while not stream.done:
        g = policy.next_length(stream.remaining)
        proposal = index.propose(stream.tokens, g) if g > 0 else []
        q = None  # n-gram drafts are point masses: one-hot q
        if proposal:
            drafts = torch.tensor(proposal, dtype=torch.long, device=device)
            stats.extra["ngram_draft_steps"] += 1
        elif dcache is not None and g > 0:
            drafts, q = draft_tokens(draft, dcache, stream.tokens, g, sampling, generator, stats, threshold,
                                     process=stream.process)
            stats.extra["model_draft_steps"] += 1
        else:
            drafts = torch.empty(0, dtype=torch.long, device=device)
        base = stream.length
        v = verify_step(target, tcache, stream.tokens, drafts, q, sampling, verifier, generator, stats,
                        process=stream.process)
        kept = stream.append(v.tokens)
        if progress is not None:
            progress.update(kept)
        if dcache is not None:
            kv.crop(dcache, min(kv.cache_length(dcache), base + v.n_accepted))
        policy.update(v.n_draft, v.n_accepted)
    policy.report(stats)
