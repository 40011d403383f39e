"""Recursive rejection sampling (RRS), docs/algorithms.md section 4.

**With replacement** (SpecInfer's multi-step speculative sampling; MCSD ``_MCSSwReplacement``):
children x_1..x_k i.i.d. from q. With p_1 = p, draft x_i is accepted with probability
min(1, p_i(x_i) / q(x_i)); after a rejection p_{i+1} = norm(max(0, p_i - q)) (q unchanged); when
all k are rejected the token is drawn from p_{k+1}. Lossless. Since p_i does not depend on which
tokens were drafted, the acceptance has the closed form 1 - prod_i (1 - sum_x min(p_i(x), q(x))).

**Without replacement** (MCSD ``_MCSSwoReplacement``; Jeon et al., "Recursive Speculative
Decoding"): x_i drawn sequentially without replacement, q_1 = q, q_{i+1} = q_i with x_i removed and
renormalised. Accept x_i with probability min(1, p_i(x_i) / q_i(x_i)); after a rejection
p_{i+1} = norm(max(0, p_i - q_i)), using q_i *before* x_i is removed (this zeroes p_{i+1}(x_i)).
The siblings must be verified in draw order (sorting them by q breaks exactness) and p_i must be
carried across siblings. Lossless. Its acceptance has no closed form:
:func:`acceptance_rrs_without_replacement` returns an unbiased Monte Carlo estimate (over rejection
paths). When the k drafts exhaust q's support, the later q_i are uniform over the tokens not yet
drawn, matching :func:`fastdecode.verification.drafts.sample_drafts`.

Zero residuals (p_i == q_i, e.g. p == q) fall back to p_i; the draft is then accepted with
probability 1, so the fallback is never used for the output.

Both rules run through fastdecode.kernels.verify_rrs with the same random draws: fused in one Triton
kernel on CUDA (acceptance tests and residual race without writing any p_i to memory), its PyTorch
reference elsewhere, so a seed gives the same tokens on either. Without replacement, drafts that include
a token with q = 0 (q's support exhausted, uniform extra draws) stay on the PyTorch plan below, the only
code that knows that convention.
"""
from __future__ import annotations

import torch

from .. import kernels
from .primitives import VerifyResult, kernel_noise, kernel_result, residual
from .drafts import categorical, check_k
from .ratio import RatioTable, ratio_table
from .sequential import AcceptanceEstimate, run


def _ratio(pc: torch.Tensor, qc: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # min(1, pc(x) / qc(x)) per row; pc, qc: [N, V] float64, x: [N]
    px = pc.gather(1, x[:, None])[:, 0]
    qx = qc.gather(1, x[:, None])[:, 0]
    return torch.where(qx > 0, (px / qx.clamp_min(1e-300)).clamp_max(1.0), torch.zeros_like(px))


def plan_rrs(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor):
    """(acc [N, k], res [N, V]) of RRS with replacement (see sequential.py)."""
    pc, qd = p.double(), q.double()
    x = drafts.long()
    acc = []
    for i in range(x.shape[1]):
        acc.append(_ratio(pc, qd, x[:, i]))
        pc = residual(pc, qd)
    return torch.stack(acc, 1), pc


def plan_rrs_without_replacement(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor):
    """(acc [N, k], res [N, V]) of RRS without replacement, drafts in draw order."""
    pc, qc = p.double(), q.double()
    x = drafts.long()
    left = torch.ones_like(qc)                        # 1 for tokens not drawn yet
    acc = []
    for i in range(x.shape[1]):
        mass = qc.sum(-1, keepdim=True)
        qi = torch.where(mass > 0, qc / mass.clamp_min(1e-300), left / left.sum(-1, keepdim=True))
        acc.append(_ratio(pc, qi, x[:, i]))
        pc = residual(pc, qi)
        qc = qc.scatter(1, x[:, i : i + 1], 0.0)
        left = left.scatter(1, x[:, i : i + 1], 0.0)
    return torch.stack(acc, 1), pc


def verify_rrs(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator=None) -> VerifyResult:
    # p, q: [N, V]; drafts: [N, k] i.i.d. from q
    return kernel_result(*kernels.verify_rrs(p, q, drafts, *kernel_noise(p, drafts.shape[1], generator)))


def verify_rrs_without_replacement(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator=None) -> VerifyResult:
    # p, q: [N, V]; drafts: [N, k] drawn without replacement from q, in draw order
    if bool((q.gather(1, drafts.long()) > 0).all()):
        u, noise = kernel_noise(p, drafts.shape[1], generator)
        return kernel_result(*kernels.verify_rrs(p, q, drafts, u, noise, replacement=False))
    return run(*plan_rrs_without_replacement(p, q, drafts), drafts, generator)


def acceptance_rrs(p: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    """[N] exact: 1 - prod_{i=1..k} (1 - sum min(p_i, q)), p_{i+1} = norm(max(0, p_i - q))."""
    check_k(k, p.shape[1], "iid")
    return acceptance_rrs_many(p, q, [k])[0]


def acceptance_rrs_many(p: torch.Tensor, q: torch.Tensor, ks: list[int], table: RatioTable | None = None) -> torch.Tensor:
    """[len(ks), N] acceptance_rrs for several k, in O(V log V + k log V) per row.

    Every residual has the form p_i = max(0, p - c_i q) / D_i with c_1 = 0, D_1 = 1, and
    c_{i+1} = c_i + D_i, D_{i+1} = D_i (1 - beta_i): D_{i+1} is the probability that the first i
    drafts are rejected. D_i beta_i = sum_x min(max(0, p - c q), D q) splits over the tokens with
    ratio p/q in (c, c + D) (they give p - c q) and those at or above c + D (they give D q), so it
    is read from the ratio-sorted prefix sums (``table``: a precomputed ratio_table(p, q))."""
    for k in ks:
        check_k(k, p.shape[1], "iid")
    t = ratio_table(p, q) if table is None else table
    c = torch.zeros(t.neg_ratio.shape[0], dtype=torch.float64, device=t.neg_ratio.device)
    d = torch.ones_like(c)
    reject = [d]
    for _ in range(max(ks)):
        hi, lo = t.count_at_least(c + d), t.count_above(c)           # ratio >= c + D, ratio > c
        band = (t.at(t.p_rest, hi) - t.at(t.p_rest, lo)) - c * (t.at(t.q_rest, hi) - t.at(t.q_rest, lo))
        d_beta = band + d * t.at(t.q_top, hi)
        c, d = c + d, (d - d_beta).clamp_min(0)
        reject.append(d)
    return torch.stack([1 - reject[k] for k in ks])


def acceptance_rrs_without_replacement(p: torch.Tensor, q: torch.Tensor, k: int, samples: int = 32,
                                       generator: torch.Generator | None = None,
                                       max_elements: int = 1 << 24) -> AcceptanceEstimate:
    """Unbiased Monte Carlo estimate (mean [N], stderr [N]) from ``samples`` rejection paths per row.

    Given the rejected drafts x_1..x_{i-1}, sibling i is accepted with probability
    beta_i = sum_x min(p_i(x), q_i(x)) whatever x_i is, and a rejected x_i has the law
    norm(max(0, q_i - p_i)). So P(all k rejected) = E[prod_i (1 - beta_i)] over paths whose drafts are
    drawn from those rejection laws: each path gives an unbiased value, exact for k = 1, and with far
    less variance than simulating the accept/reject decisions."""
    check_k(k, p.shape[1], "without_replacement")
    if not isinstance(samples, int) or samples < 2:
        raise ValueError(f"samples must be an int >= 2 (the standard error needs two), got {samples!r}")
    n, v = p.shape
    if n == 0:
        empty = p.new_zeros(0, dtype=torch.float64)
        return AcceptanceEstimate(empty, empty.clone())
    rows = max(1, max_elements // max(1, v * samples))
    vals = torch.cat([_rejection_paths(p[s : s + rows], q[s : s + rows], k, samples, generator)
                      for s in range(0, n, rows)])                         # [N, samples]
    return AcceptanceEstimate(vals.mean(-1), vals.std(-1) / samples ** 0.5)


def _rejection_paths(p: torch.Tensor, q: torch.Tensor, k: int, samples: int, generator) -> torch.Tensor:
    # [n, samples] values 1 - prod_i (1 - beta_i) along sampled rejection paths
    pc = p.double().repeat_interleave(samples, 0)
    qc = q.double().repeat_interleave(samples, 0)
    drawn = []
    reject = torch.ones(pc.shape[0], dtype=torch.float64, device=pc.device)
    for i in range(k):
        mass = qc.sum(-1, keepdim=True)
        qi = qc / mass.clamp_min(1e-300)
        if (mass <= 0).any():                                              # q's support exhausted
            left = torch.ones_like(qc).scatter_(1, torch.cat(drawn, 1), 0.0)
            qi = torch.where(mass > 0, qi, left / left.sum(-1, keepdim=True))
        over = (pc - qi).clamp_min_(0)                                     # max(0, p_i - q_i)
        left_p = over.sum(-1, keepdim=True)                                # 1 - beta_i
        reject = reject * left_p[:, 0].clamp(0.0, 1.0)
        if i + 1 == k:
            break
        rejected = over.sub_(pc).add_(qi)                                  # max(0, q_i - p_i), in place
        none = rejected.sum(-1, keepdim=True) <= 0                          # beta_i = 1: path value settled
        x = categorical(torch.where(none, qi, rejected), generator, 1)    # [rows, 1]
        over = (pc - qi).clamp_min_(0)
        pc = torch.where(left_p > 1e-12 * pc.shape[1], over / left_p.clamp_min(1e-300), pc)   # residual
        qc.scatter_(1, x, 0.0)
        drawn.append(x)
    return (1 - reject).view(-1, samples)
