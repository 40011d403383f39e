"""Decoding statistics and the result object returned by :func:`fastdecode.generate`.

Terms (used the same way in code, stats and benchmark output):
- p: target distribution, q: draft distribution.
- accepted: a drafted token the target keeps. residual: the token sampled from what is left of p
  after a rejection. bonus: the extra target token after a fully accepted draft.
- alpha (``acceptance_rate``): accepted / drafted.
- tau (``tokens_per_target_call``): emitted tokens / target forward passes (bonus and residual included).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class DecodeStats:
    method: str = "autoregressive"
    target_calls: int = 0
    draft_calls: int = 0
    drafted_tokens: int = 0
    accepted_tokens: int = 0
    new_tokens: int = 0
    wall_time_s: float = 0.0
    # accepted_length_histogram[n] = number of steps in which exactly n drafted tokens were accepted
    accepted_length_histogram: list[int] = field(default_factory=list)
    # per position i (0-based) of a draft: [times a token was drafted there, times it was accepted]
    position_drafted: list[int] = field(default_factory=list)
    position_accepted: list[int] = field(default_factory=list)
    lossy: bool = False
    extra: dict = field(default_factory=dict)

    # ------------------------------------------------------------------ recording
    def record_step(self, drafted: int, accepted: int) -> None:
        """One verification step of a chain of ``drafted`` tokens of which the first ``accepted`` were kept."""
        self.drafted_tokens += drafted
        self.accepted_tokens += accepted
        _bump(self.accepted_length_histogram, accepted)
        for i in range(drafted):
            _bump(self.position_drafted, i)
            if i < accepted:
                _bump(self.position_accepted, i)

    # ------------------------------------------------------------------ derived
    @property
    def steps(self) -> int:
        return sum(self.accepted_length_histogram)

    @property
    def acceptance_rate(self) -> float:
        """alpha = accepted / drafted (nan when nothing was drafted)."""
        return self.accepted_tokens / self.drafted_tokens if self.drafted_tokens else float("nan")

    @property
    def tokens_per_target_call(self) -> float:
        """tau = new tokens / target forward passes (the prefill counts as a call)."""
        return self.new_tokens / self.target_calls if self.target_calls else float("nan")

    @property
    def per_position_acceptance(self) -> list[float]:
        """Acceptance frequency of the i-th drafted token of a step, given it was verified."""
        return [a / d if d else float("nan") for a, d in zip(self.position_accepted, self.position_drafted)]

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else float("nan")

    def summary(self) -> str:
        s = f"{self.new_tokens} tokens in {self.wall_time_s:.2f} s ({self.tokens_per_s:.1f} tok/s), method={self.method}"
        if self.drafted_tokens and "large_fraction" in self.extra:  # small-model tokens count in tau too
            s += (f", alpha={self.acceptance_rate:.3f} (large-model verification), "
                  f"new tokens per target call={self.tokens_per_target_call:.2f}")
        elif self.drafted_tokens:
            s += f", alpha={self.acceptance_rate:.3f}, tau={self.tokens_per_target_call:.2f}"
        s += f", target calls={self.target_calls}, draft calls={self.draft_calls}"
        if "large_fraction" in self.extra:  # entropy switch
            e = self.extra
            s += (f", large-model tokens={e['large_fraction']:.0%}, switches={e['switches']}, "
                  f"estimated cost={e['estimated_cost_ratio']:.2f}x the large model alone")
        if self.extra.get("plain_steps"):  # the fallback to plain decoding
            s += f", plain steps={self.extra['plain_steps']}"
            rates = self.extra.get("measured_tokens_per_s", {})
            if len(rates) == 2:
                s += f" (measured: drafting {rates['drafting']:.0f} tok/s, plain {rates['plain']:.0f} tok/s)"
        if "tree_nodes" in self.extra:  # multi-draft
            s += f", k={self.extra['num_drafts']} ({self.extra['verifier']}), tree nodes={self.extra['tree_nodes']}"
        if self.extra.get("packed_linears"):  # kernels.cpu_linear
            s += f", packed linear layers={self.extra['packed_linears']}"
        if self.lossy:
            s += " (lossy)"
        return s


def _bump(hist: list[int], i: int) -> None:
    while len(hist) <= i:
        hist.append(0)
    hist[i] += 1


@dataclass
class GenerationResult:
    sequences: torch.Tensor  # [batch, prompt_len + new_tokens]
    stats: DecodeStats
    # with output_scores / output_logits (HF's): one [batch, V] float32 tensor per generated column
    scores: tuple[torch.Tensor, ...] | None = None
    logits: tuple[torch.Tensor, ...] | None = None

    # Read like HF's output (a ModelOutput): out["sequences"], out[0], "scores" in out, out.keys(), out.to_tuple().
    # Its keys are HF's fields that are set (sequences, and scores / logits when asked for); stats is ours, an
    # attribute only, so that out[0], out[1], ... are what HF's output gives at those places.
    _HF_FIELDS = ("sequences", "scores", "logits")

    def keys(self) -> list[str]:
        return [k for k in self._HF_FIELDS if getattr(self, k) is not None]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.keys():
                why = (" (None: pass output_scores=True / output_logits=True)" if key in self._HF_FIELDS else
                       "; the statistics are .stats" if key == "stats" else "")
                raise KeyError(f"{key!r}: the result's keys are {self.keys()}{why}")
            return getattr(self, key)
        return self.to_tuple()[key]
