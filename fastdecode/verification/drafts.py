"""Draft schemes: how the k drafts of one tree node are drawn from the draft distribution q.

- ``"iid"``: k independent draws from q (duplicates possible). SpecTr's K-SEQ, RRS with replacement,
  the optimal verifier and typical acceptance need these.
- ``"without_replacement"``: sequential draws, q_1 = q, q_{i+1} = q_i with x_i removed and
  renormalised, implemented as Gumbel-top-k (exponential clocks); the drafts come back **in draw
  order**, which the verifier needs (docs/algorithms.md section 4, pitfall (i)). When the k draws exhaust
  q's support (k > number of tokens with q > 0, e.g. at temperature 0 or after top-k), the remaining
  draws are uniform over the tokens not yet drawn; the verifier uses the same convention (it is the
  limit of q_eps = (1 - eps) q + eps / V as eps -> 0), so the scheme stays exact.
- ``"greedy"`` (Hu et al., ICLR'25): the top k-1 tokens of q (descending q, ties broken as
  ``torch.topk`` does) plus one draw from q' = q restricted to the other tokens and renormalised
  (uniform over them when q has no mass left there).

Everything is batched over N rows and uses only the ``generator`` for randomness.
"""
from __future__ import annotations

import torch

SCHEMES = ("iid", "without_replacement", "greedy")


def categorical(weights: torch.Tensor, generator: torch.Generator | None = None, num_samples: int = 1) -> torch.Tensor:
    """``num_samples`` independent draws per row from nonnegative weights [N, V] (rows need not sum to
    1; each needs positive mass). Inverse CDF in float64: a token with zero weight is never drawn.
    Returns [N, num_samples] long."""
    w = weights.double()
    cdf = w.cumsum(-1)                                     # [N, V]
    total = cdf[:, -1:]
    u = torch.rand((w.shape[0], num_samples), generator=generator, device=w.device, dtype=torch.float64)
    idx = torch.searchsorted(cdf, u * total, right=True)   # first index with cdf > u * total
    return idx.clamp_max(w.shape[1] - 1)


def check_k(k: int, vocab: int, scheme: str) -> None:
    """Raise ValueError unless k is an int >= 1 that ``scheme`` can draw from a vocabulary of ``vocab``."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown draft scheme {scheme!r}; choose one of {SCHEMES}")
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if scheme != "iid" and k > vocab:
        raise ValueError(f"scheme {scheme!r} draws k distinct tokens: k = {k} exceeds V = {vocab}")


def _check(q: torch.Tensor, k: int, scheme: str) -> None:
    if not isinstance(q, torch.Tensor) or q.dim() != 2 or not q.is_floating_point():
        raise ValueError(f"q must be a floating-point [N, V] tensor, got {getattr(q, 'shape', type(q))}")
    check_k(k, q.shape[1], scheme)
    if (q < 0).any() or not torch.isfinite(q).all() or (q.sum(-1) <= 0).any():
        raise ValueError("q must hold nonnegative, finite rows with positive mass")


def sample_drafts(q: torch.Tensor, k: int, scheme: str = "iid", generator: torch.Generator | None = None) -> torch.Tensor:
    """k drafts per row from q [N, V] under ``scheme``; returns [N, k] long (draw order for
    "without_replacement", the k-1 deterministic tokens first and the sampled one last for "greedy")."""
    _check(q, k, scheme)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return draw(q, k, scheme, generator)


def draw(q: torch.Tensor, k: int, scheme: str, generator=None) -> torch.Tensor:
    """:func:`sample_drafts` without its checks of the arguments (each a host read): for the decoding loops,
    whose q rows come from ``kernels.probs`` and are checked for NaN / inf at the step's own read."""
    if scheme == "iid":
        return categorical(q, generator, k)
    if scheme == "without_replacement":
        return _gumbel_top_k(q, k, generator)
    return _greedy(q, k, generator)


def _gumbel_top_k(q: torch.Tensor, k: int, generator) -> torch.Tensor:
    # Exponential clocks: token x rings at E_x / q(x); the first k rings are k sequential draws
    # without replacement, in draw order. Keys log q(x) + Gumbel; tokens with q = 0 get keys far
    # below every positive token, so they only come after q's support is exhausted, in uniform order.
    qd = q.double()
    u = torch.rand(q.shape, generator=generator, device=q.device, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
    keys = torch.where(qd > 0, qd.clamp_min(1e-300).log() + gumbel, gumbel - 1e4)
    return keys.topk(k, dim=-1).indices


def _greedy(q: torch.Tensor, k: int, generator) -> torch.Tensor:
    top = q.topk(k - 1, dim=-1).indices if k > 1 else q.new_zeros((q.shape[0], 0), dtype=torch.long)
    return torch.cat([top, categorical(greedy_rest(q, top), generator, 1)], dim=1)


def greedy_rest(q: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """q' for greedy drafting: q [N, V] with the tokens ``top`` [N, k-1] removed, renormalised
    (uniform over the remaining tokens when no q-mass is left). float64 [N, V]."""
    rest = q.double().scatter(1, top, 0.0)
    outside = torch.ones_like(rest).scatter_(1, top, 0.0)
    mass = rest.sum(-1, keepdim=True)
    rest = torch.where(mass > 0, rest, outside)
    return rest / rest.sum(-1, keepdim=True)


def check_scheme(q: torch.Tensor, drafts: torch.Tensor, scheme: str) -> None:
    """Raise ValueError when ``drafts`` [N, k] could not have been drawn from q [N, V] by ``scheme``:
    a draft with q = 0 (outside the exhausted-support convention), duplicates under
    "without_replacement" or "greedy", greedy drafts whose first k-1 are not a top-(k-1) set of q."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown draft scheme {scheme!r}; choose one of {SCHEMES}")
    x = drafts.long()
    k = x.shape[1]
    qx = q.gather(1, x)                                         # [N, k]
    if scheme == "iid":
        bad = (qx <= 0).any(-1)
        if bad.any():
            raise ValueError(f"drafts of row {int(bad.nonzero()[0])} include a token with q = 0: "
                             "they were not sampled from q (scheme 'iid')")
        return
    srt = x.sort(-1).values
    dup = (srt[:, 1:] == srt[:, :-1]).any(-1)
    if dup.any():
        raise ValueError(f"drafts of row {int(dup.nonzero()[0])} repeat a token: scheme {scheme!r} "
                         "draws distinct tokens (use scheme 'iid' verifiers for duplicates)")
    support = (q > 0).sum(-1, keepdim=True)                     # [N, 1]
    if scheme == "without_replacement":
        # the first min(k, support) draws have q > 0, any later one (support exhausted) has q = 0
        should_be_pos = torch.arange(k, device=x.device)[None, :] < support
        bad = ((qx > 0) != should_be_pos).any(-1)
        if bad.any():
            raise ValueError(f"drafts of row {int(bad.nonzero()[0])} could not come from sampling q without "
                             "replacement: every draft must have q > 0 until q's support is exhausted")
        return
    # greedy: the first k-1 must be a top-(k-1) set (ties allowed), the last one outside it
    if k > 1:
        top_min = qx[:, :-1].min(-1).values
        others = q.scatter(1, x[:, :-1], float("-inf")).max(-1).values
        bad = top_min < others
        if bad.any():
            raise ValueError(f"greedy drafts of row {int(bad.nonzero()[0])}: the first k-1 drafts are not "
                             "the k-1 most probable tokens of q")
    rest_mass = q.double().scatter(1, x[:, :-1], 0.0).sum(-1)
    bad = (qx[:, -1] <= 0) & (rest_mass > 0)
    if bad.any():
        raise ValueError(f"greedy drafts of row {int(bad.nonzero()[0])}: the sampled (last) draft has q = 0")
