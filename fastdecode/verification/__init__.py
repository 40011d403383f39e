"""Verification rules: pure functions on probability tensors (p = target, q = draft).

Every rule lives in its own module and exposes ``verify_<name>(p, q, drafts, generator)`` returning a
:class:`VerifyResult`, and ``acceptance_<name>(p, q, k)`` giving the probability that the emitted token
is one of the drafts. :data:`METHODS` holds, per method, those two functions, the draft scheme it needs
and whether it is lossless.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .bound import optimal_acceptance_rate
from .primitives import VerifyResult, check_distributions, check_drafts, check_generator, residual, sample
from .drafts import check_scheme, sample_drafts
from .greedy_draft import acceptance_greedy_draft, verify_greedy_draft
from .optimal import acceptance_optimal, build_races, verify_optimal, verify_prepared
from .rrs import acceptance_rrs, acceptance_rrs_without_replacement, verify_rrs, verify_rrs_without_replacement
from .spectr import acceptance_spectr, verify_spectr
from .token import acceptance_speculative, verify_speculative
from .typical import acceptance_typical, verify_typical


@dataclass(frozen=True)
class MethodInfo:
    verify: Callable       # (p, q, drafts, generator) -> VerifyResult
    acceptance: Callable   # (p, q, k) -> [N] probability that one of k drafts is emitted
    scheme: str        # draft scheme the method needs: "iid", "without_replacement" or "greedy"
    lossless: bool
    single_draft: bool = False


METHODS: dict[str, MethodInfo] = {
    "speculative": MethodInfo(verify_speculative, acceptance_speculative, "iid", True, single_draft=True),
    "rrs": MethodInfo(verify_rrs, acceptance_rrs, "iid", True),
    "rrs_without_replacement": MethodInfo(verify_rrs_without_replacement, acceptance_rrs_without_replacement,
                                          "without_replacement", True),
    "spectr": MethodInfo(verify_spectr, acceptance_spectr, "iid", True),
    "greedy_draft": MethodInfo(verify_greedy_draft, acceptance_greedy_draft, "greedy", True),
    "typical": MethodInfo(verify_typical, acceptance_typical, "iid", False),
    "optimal": MethodInfo(verify_optimal, acceptance_optimal, "iid", True),
}


def method_info(method: str) -> MethodInfo:
    if method not in METHODS:
        raise ValueError(f"unknown verification method {method!r}; choose one of {sorted(METHODS)}")
    return METHODS[method]


PREPARABLE = frozenset({"optimal"})   # methods for which prepare() returns something


def verify(method: str, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator=None,
           prepared=None) -> VerifyResult:
    """Decide, per row, which token is emitted. p, q: [N, V]; drafts: [N, k] drawn with the method's scheme.

    ``prepared``: the method's draft-independent work for these rows, from :func:`prepare` (one row:
    its entry of prepare's list); the result is then the same as without it, for the same generator."""
    info = method_info(method)
    check_distributions(p, q)
    check_generator(generator)
    check_drafts(drafts, p.shape[0], p.shape[1], 1 if info.single_draft else None)
    check_scheme(q, drafts, info.scheme)
    if prepared is not None and method not in PREPARABLE:
        raise ValueError(f"method {method!r} has no prepared form (see prepare)")
    return verify_unchecked(method, p, q, drafts, generator, prepared)


def verify_unchecked(method: str, p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator=None,
                     prepared=None) -> VerifyResult:
    """:func:`verify` without its checks of the arguments, several of which read the device (finite rows
    summing to 1, drafts in range and drawn by the scheme): for the decoding loops, whose p and q come from
    ``kernels.probs`` and whose drafts from :func:`~.drafts.draw`, and which check p and q for NaN / inf at
    their own host read. ``method`` must be a key of :data:`METHODS`."""
    if prepared is not None:
        return verify_prepared(prepared, drafts, generator)
    return METHODS[method].verify(p, q, drafts, generator)


def prepare(method: str, p: torch.Tensor, q: torch.Tensor, ks: list[int]):
    """The per-row work of ``method`` that does not depend on the drafts, for all rows in ONE batched
    call (e.g. the tree nodes of a multi-draft step, before the walk): a list with one entry per row
    (row i drawn with ks[i] drafts) to pass to :func:`verify` as ``prepared``, or None when the method
    has no such work ("optimal" has: its race; the other rules are cheap closed forms per draft)."""
    method_info(method)
    if method not in PREPARABLE:
        return None
    check_distributions(p, q)
    return build_races(p, q, list(ks))


def acceptance_probability(method: str, p: torch.Tensor, q: torch.Tensor, k: int):
    """[N] probability that the emitted token is one of k drafts (see each module for exact vs estimated).

    Rows may miss 1 by the tolerance of :func:`check_distributions`, so the result (the mean of an
    estimate) is clamped to [0, 1]. Gradients flow through p and q where the rule is differentiable.
    """
    info = method_info(method)
    check_distributions(p, q)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if info.single_draft and k != 1:
        raise ValueError(f"method {method!r} verifies a single draft: k must be 1, got {k}")
    out = info.acceptance(p, q, k)
    if isinstance(out, tuple):  # an AcceptanceEstimate (mean, stderr)
        return out._replace(mean=out.mean.clamp(0, 1))
    return out.clamp(0, 1)


__all__ = [
    "METHODS", "MethodInfo", "VerifyResult", "verify", "verify_unchecked", "prepare", "PREPARABLE", "acceptance_probability", "method_info",
    "check_distributions", "check_drafts", "check_generator", "residual", "sample", "sample_drafts", "optimal_acceptance_rate",
]
