"""Frozen, validated configuration objects, one per concern.

Every public argument of :func:`fastdecode.generate` lands in one of these dataclasses; their
``__post_init__`` is the single place where bad input is turned into a ``ValueError`` that names it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingConfig:
    """How logits become a distribution. Applied identically to p (target) and q (draft).

    temperature: 0 means greedy (the distribution is one-hot at the argmax).
    top_k: 0 disables it. top_p: 1.0 disables it.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        t = self.temperature
        if not isinstance(t, (int, float)) or isinstance(t, bool) or math.isnan(t) or t < 0 or math.isinf(t):
            raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {t!r}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 disables it), got {self.top_k!r}")
        p = self.top_p
        if not isinstance(p, (int, float)) or isinstance(p, bool) or math.isnan(p) or not (0.0 < p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class SpeculativeConfig:
    """Single-draft speculative decoding (Leviathan et al. / Chen et al.).

    draft_length: tokens drafted per step (gamma); with ``adaptive`` it is the starting length.
    adaptive: grow the draft length by 2 after a fully accepted draft, shrink it by 1 after a
        rejection (within [1, max_draft_length]), and stop drafting early when the draft's top
        probability falls below ``confidence_threshold``. This only changes *how many* tokens are
        drafted, decided from the draft's own distribution, so the output law stays exactly p.
    verifier: "token" (token-by-token rule of algorithms.md section 1) or "block" (block
        verification, optimal_verifier.md section 2).
    """

    draft_length: int = 4
    adaptive: bool = True
    max_draft_length: int = 16
    confidence_threshold: float = 0.4
    verifier: str = "token"

    def __post_init__(self):
        if not isinstance(self.draft_length, int) or self.draft_length < 1:
            raise ValueError(f"draft_length must be an int >= 1, got {self.draft_length!r}")
        if not isinstance(self.max_draft_length, int) or self.max_draft_length < self.draft_length:
            raise ValueError(
                f"max_draft_length must be an int >= draft_length ({self.draft_length}), got {self.max_draft_length!r}"
            )
        c = self.confidence_threshold
        if not (0.0 <= c < 1.0):
            raise ValueError(f"confidence_threshold must be in [0, 1), got {c!r}")
        if self.verifier not in ("token", "block"):
            raise ValueError(f"single-draft verifier must be 'token' or 'block', got {self.verifier!r}")


MULTI_DRAFT_VERIFIERS = ("rrs", "rrs_without_replacement", "spectr", "greedy_draft", "typical", "optimal")


@dataclass(frozen=True)
class MultiDraftConfig:
    """Multi-draft speculative decoding: k draft sequences of draft_length tokens, verified as a tree.

    The draft scheme follows from the verifier: "rrs_without_replacement" draws siblings without
    replacement, "greedy_draft" takes the draft's top k-1 tokens plus one sampled token, all other
    verifiers need i.i.d. drafts.
    """

    num_drafts: int = 2
    draft_length: int = 4
    verifier: str = "rrs"
    adaptive: bool = False       # tree depth: +2 after a fully accepted path, -1 after a rejection
    max_draft_length: int = 16   # upper bound of the adaptive depth

    def __post_init__(self):
        if not isinstance(self.num_drafts, int) or isinstance(self.num_drafts, bool) or not (1 <= self.num_drafts <= 16):
            raise ValueError(f"num_drafts must be an int in [1, 16], got {self.num_drafts!r}")
        if not isinstance(self.draft_length, int) or isinstance(self.draft_length, bool) or self.draft_length < 1:
            raise ValueError(f"draft_length must be an int >= 1, got {self.draft_length!r}")
        if not isinstance(self.max_draft_length, int) or self.max_draft_length < self.draft_length:
            raise ValueError(f"max_draft_length must be an int >= draft_length ({self.draft_length}), "
                             f"got {self.max_draft_length!r}")
        if self.verifier not in MULTI_DRAFT_VERIFIERS:
            raise ValueError(f"unknown multi-draft verifier {self.verifier!r}; choose one of {MULTI_DRAFT_VERIFIERS}")

    @property
    def scheme(self) -> str:
        return {"rrs_without_replacement": "without_replacement", "greedy_draft": "greedy"}.get(self.verifier, "iid")
