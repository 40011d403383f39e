"""Entropy-adaptive decoding (``method="entropy_switch"``) on the static engine: the rule, the window, the
dwell and the counters of :mod:`fastdecode.decoding.entropy_switch`, with each model's forwards run by its
static runner (preallocated cache, recorded fixed-shape forwards) instead of transformers' dynamic cache.

- Each model's runner holds the committed tokens in its first ``fed`` slots. A model that generates (or
  takes over) scores the tokens it lacks and then the newest one: on plain (eager) forwards in one forward,
  as the dynamic engine does; on recorded ones in bucket-padded pieces of up to ``CATCH_UP`` tokens, then
  one one-token forward, so that a few recorded shapes serve every catch-up. A model's first forward of the call is its prefill of the
  text so far (a model the rule never picks costs nothing).
- Nothing is cropped: slots past ``fed`` are hidden by the mask and overwritten by the next forward.
- ``speculate_when_large``: the target's steps are the static chain step (:mod:`fastdecode.decoding.static`):
  the draft's g tokens (one recorded graph when both runners record), one target forward padded to its
  bucket, the verification on the device, one host read; then one more read for the emitted tokens'
  entropies, which the rule needs on the host anyway.

The random draws are the dynamic engine's, in the same order, so a seed gives the same tokens on both
engines (tested). The method stays lossy by design; the speculative segments are exactly the target's law.
"""
from __future__ import annotations

import torch

from ..config import DRAFT, TARGET, EntropySwitchConfig, SamplingConfig
from ..stats import DecodeStats
from . import hf_cache as kv
from . import sampling as sm
from .entropy_switch import _Switcher
from .static import _draft, bucket, capacity_for, feed, padded, read_verdict, runner, score_drafts, verify_drafts
from .static_step import recordable
from .stream import TokenStream


CATCH_UP = 16   # tokens per recorded catch-up forward (padded to its bucket)


class _StaticSwitcher(_Switcher):
    """:class:`~fastdecode.decoding.entropy_switch._Switcher` on static runners (see the module docstring)."""

    def __init__(self, target, draft, stream, sampling, es, generator, stats, progress, trace, mode: str):
        super().__init__(target, draft, stream, sampling, es, generator, stats, progress, trace)
        self.caches = None   # (the dynamic engine's; the runners hold the keys and values here)
        device = kv.device(target)
        # the longest forward: a verification, or a recorded catch-up piece (a few recorded lengths, not one
        # one-token forward per token a model missed)
        self.chunk = max(bucket(es.draft_length + 1) if es.speculate_when_large else 1, CATCH_UP)
        cap = capacity_for(stream.length, stream.max_new_tokens, self.chunk)
        self.runs = {name: runner(m, cap, mode, longest=self.chunk) for name, m in self.models.items()}
        self.slots = {TARGET: None, DRAFT: None}   # committed tokens each runner holds (None: not prefilled)
        self.seq = torch.zeros(cap, dtype=torch.long, device=device)   # the committed tokens, on the device
        self.seq[: stream.length] = torch.tensor(stream.tokens, device=device)
        self.pad = torch.zeros(cap, dtype=torch.long, device=device)
        self.recorded = recordable(self.runs[DRAFT], self.runs[TARGET], sampling, "token", 0.0) \
            and stream.prefix is None   # logits processors read the text outside the recorded graphs

    def _count(self, name: str, calls: int) -> None:
        if name == TARGET:
            self.stats.target_calls += calls
        else:
            self.stats.draft_calls += calls

    def _ready(self, name: str, upto: int) -> None:
        """The runner of ``name`` holds the committed tokens 0 .. upto - 1: prefilled in its first use, else
        the ones it lacks scored in bucket-padded pieces."""
        run, have = self.runs[name], self.slots[name]
        if have is None:
            run.prefill(self.seq[None, :upto])   # (also with upto = 0: a reused runner starts clean)
            self._count(name, int(upto > 0))
        elif have < upto:
            self._count(name, feed(run, self.seq, self.pad, have, upto - have, most=self.chunk))
        self.fed[name] += upto - (have or 0)
        self.slots[name] = upto

    def forward(self, name: str) -> torch.Tensor:
        """The logits after the newest token [1, V] from the model ``name`` (the catch-up included)."""
        run, L, have = self.runs[name], self.stream.length, self.slots[name]
        lacking = L - (have or 0)
        if have is not None and run.mode == "eager" and lacking <= (run.max_forward or lacking):
            logits = run.forward(self.seq[None, have:L], have, keep=1)   # one forward, as the dynamic engine
            self._count(name, 1)
            self.fed[name] += lacking
        else:
            self._ready(name, L - 1)
            b = padded(run, 1, self.chunk)
            logits = run.forward(torch.cat([self.seq[L - 1 : L], self.pad[: b - 1]])[None], L - 1)[:1]
            self._count(name, 1)
            self.fed[name] += 1
        self.slots[name] = L
        self.caught_up(lacking)
        return logits

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        """Bits per row [rows], all NaN when a logit is NaN or +inf (the forwards are not checked on the host:
        :meth:`host_entropy`'s read tells, and the chain step's verdict)."""
        h = super().entropy(logits)
        return torch.where(sm.all_finite(logits), h, torch.full_like(h, float("nan")))

    def crop_draft(self, n: int) -> None:
        if self.slots[DRAFT] is not None:
            self.slots[DRAFT] = min(self.slots[DRAFT], n)

    def emit(self, tokens, entropies, logits, probe, mean, switched) -> int:
        pos = self.stream.length
        kept = super().emit(tokens, entropies, logits, probe, mean, switched)
        self.seq[pos : pos + kept] = torch.tensor(tokens[:kept], device=self.seq.device)
        return kept

    def chain_step(self, verifier) -> tuple[list[int], torch.Tensor]:
        """The static chain step (see the module docstring): (tokens to emit, the target's logits [n + 1, V])."""
        stream, sampling, generator, stats = self.stream, self.sampling, self.generator, self.stats
        L = stream.length
        g = min(self.es.draft_length, stream.remaining - 1)
        trun, last = self.runs[TARGET], self.seq[L - 1 : L]
        takeover = L - 1 - (self.slots[TARGET] or 0)
        if g <= 0:   # a plain target step, as the dynamic engine's verification of no drafts
            logits = self.forward(TARGET)
            nxt = sm.next_token(stream.process(logits), sampling, generator)
            stats.record_step(0, 0)
            self.crop_draft(L)
            return [nxt], logits
        dlen = self.slots[DRAFT]
        if dlen is None:   # the draft's first use: its prefill (the chain then catches up from it)
            self._ready(DRAFT, L - 1)
            dlen = L - 1
        x, q, dlen = _draft(self.runs[DRAFT], self.seq, self.pad, last, L, dlen, g, sampling, generator, stats, 0.0,
                            self.chunk, self.recorded, stream.process)
        self.fed[DRAFT] += dlen - self.slots[DRAFT] + g
        self._ready(TARGET, L - 1)
        logits = score_drafts(trun, last, x, self.pad, L, self.chunk, stats)
        self.fed[TARGET] += g + 1
        n, nxt, drafts = read_verdict(verify_drafts(trun, stream.process(logits, x), q, x, sampling, "token", generator,
                                                    self.recorded), x)
        stats.record_step(g, n)
        self.caught_up(takeover + 1)
        self.slots[TARGET] = L + n                    # [last, x_1..x_n] are committed now
        self.slots[DRAFT] = L + min(n, g - 1)         # the draft fed last and x_1..x_{g-1}
        return drafts[:n] + [nxt], logits[: n + 1]


def decode(target, draft, stream: TokenStream, sampling: SamplingConfig, es: EntropySwitchConfig, generator,
           stats: DecodeStats, progress=None, mode: str = "eager", trace: list | None = None) -> None:
    """:func:`fastdecode.decoding.entropy_switch.decode` on the static engine (``mode``: its recording)."""
    if stream.done:   # nothing to generate: no cache to allocate, the counters all the same
        _Switcher(target, draft, stream, sampling, es, generator, stats, progress, trace).fill_stats()
        return
    sw = _StaticSwitcher(target, draft, stream, sm.greedy_limit(sampling), es, generator, stats, progress, trace, mode)
    sw.run()
    sw.fill_stats()
