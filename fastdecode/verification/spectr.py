"""SpecTr's K-SEQ (Sun, Suresh, Ro, Beirami, Jain, Yu, NeurIPS'23), docs/algorithms.md section 2.

Drafts x_1..x_k i.i.d. from q (duplicates counted). With beta(rho) = sum_x min(q(x), p(x) / rho),
rho* is the smallest rho in [1, k] with 1 - (1 - beta(rho))^k <= rho * beta(rho) (the left side
decreases in rho, the right side increases). Each draft is accepted with probability
min(1, p(x_i) / (rho* q(x_i))) in turn; when all are rejected the token is drawn from the residual.

For any valid rho, P(emit x and accept) = min(q, p / rho)(x) * c with c = (1 - (1 - beta)^k) / beta,
so the residual is norm(p - c * min(q, p / rho)), nonnegative exactly when c <= rho; at rho* it is
norm(max(0, p - rho* q)). rho* is found by a multi-way bisection keeping the upper end (so the residual never
has negative mass), with beta(rho) evaluated in O(log V) from the tokens sorted by p/q (ratio.py). Lossless; the
acceptance is alpha = 1 - (1 - beta(rho*))^k (= rho* beta(rho*)), at least (1 - 1/e) times the optimum
for i.i.d. drafts. For k = 1, rho* = 1 and K-SEQ is speculative sampling.

The acceptance tests and the residual draw run through fastdecode.kernels.verify_kseq (residual
norm(max(0, p - rho* q))) after rho* is found here: fused in one Triton kernel on CUDA, its PyTorch
reference elsewhere, with the same random draws.
"""
from __future__ import annotations

import torch

from .. import kernels
from .primitives import VerifyResult, kernel_noise, kernel_result, normalize_or
from .drafts import check_k
from .ratio import RatioTable, ratio_table

_POINTS = 64   # points tried at once in each round of the search for rho*
_ROUNDS = 10   # each round shrinks the bracket [lo, hi] by _POINTS: (k - 1) / 64^10 < 2^-56, below a float64 ulp at rho >= 1


def _accept_any(beta: torch.Tensor, k: int) -> torch.Tensor:
    # 1 - (1 - beta)^k, accurate for small beta
    return -torch.expm1(k * torch.log1p(-beta.clamp(0.0, 1.0)))


def _beta(table: RatioTable, rho: torch.Tensor) -> torch.Tensor:
    # beta(rho) = q(tokens with p/q >= rho) + p(the others) / rho; rho [N] or [N, G]
    j = table.count_at_least(rho)
    return table.at(table.q_top, j) + table.at(table.p_rest, j) / rho


def _bisect(table: RatioTable, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A multi-way bisection: each round evaluates the condition at _POINTS evenly spaced points of the bracket
    at once and keeps the sub-interval where it turns true (the upper end: a valid rho, so the residual never has
    negative mass; the lower end: invalid, or 1). Ten rounds of a few operations on [N, 64] replace 64 rounds of
    [N]: on a GPU or for the few rows of a decoding step the launches, not the arithmetic, set the time."""
    n, dev = table.neg_ratio.shape[0], table.neg_ratio.device
    lo = torch.ones(n, dtype=torch.float64, device=dev)
    if k == 1:
        return lo, _beta(table, lo)
    hi = torch.full_like(lo, float(k))
    t = torch.arange(1, _POINTS + 1, dtype=torch.float64, device=dev) / _POINTS      # the last point is hi itself
    for _ in range(_ROUNDS):
        grid = torch.addcmul(lo[:, None], (hi - lo)[:, None], t[None, :])             # [N, G]
        grid[:, -1] = hi
        b = _beta(table, grid)
        ok = _accept_any(b, k) <= grid * b                                             # f(rho) <= 0: rho is valid
        first = torch.where(ok.any(1), ok.int().argmax(1), _POINTS - 1)                # the first valid point
        lo = torch.where(first > 0, grid.gather(1, (first - 1).clamp_min(0)[:, None])[:, 0], lo)
        hi = grid.gather(1, first[:, None])[:, 0]
    return hi, _beta(table, hi)


def rho_star(p: torch.Tensor, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rho* [N], beta(rho*) [N]) in float64. p, q: [N, V]."""
    return _bisect(ratio_table(p, q), k)


def plan_spectr(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor):
    """(acc [N, k], res [N, V]) of K-SEQ (see sequential.py)."""
    pd, qd = p.double(), q.double()
    x = drafts.long()
    k = x.shape[1]
    rho, b = rho_star(pd, qd, k)
    px, qx = pd.gather(1, x), qd.gather(1, x)
    acc = torch.where(qx > 0, (px / (rho[:, None] * qx.clamp_min(1e-300))).clamp_max(1.0), torch.zeros_like(px))
    c = torch.where(b > 0, _accept_any(b, k) / b.clamp_min(1e-300), torch.full_like(b, float(k)))
    res = (pd - c[:, None] * torch.minimum(qd, pd / rho[:, None])).clamp_min(0)
    return acc, normalize_or(res, pd)  # never used: then beta = 1


def verify_spectr(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator=None) -> VerifyResult:
    # p, q: [N, V]; drafts: [N, k] i.i.d. from q
    rho, _ = rho_star(p.double(), q.double(), drafts.shape[1])
    return kernel_result(*kernels.verify_kseq(p, q, drafts, *kernel_noise(p, drafts.shape[1], generator), rho))


def acceptance_spectr(p: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    """[N] exact: 1 - (1 - beta(rho*))^k."""
    check_k(k, p.shape[1], "iid")
    _, b = rho_star(p, q, k)
    return _accept_any(b, k)


def acceptance_spectr_many(p: torch.Tensor, q: torch.Tensor, ks: list[int], table: RatioTable | None = None) -> torch.Tensor:
    """[len(ks), N] acceptance_spectr for several k from one ratio sort (``table``: a precomputed
    ratio_table(p, q))."""
    for k in ks:
        check_k(k, p.shape[1], "iid")
    table = ratio_table(p, q) if table is None else table
    return torch.stack([_accept_any(_bisect(table, k)[1], k) for k in ks])
