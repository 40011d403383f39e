"""Recursive rejection sampling (RRS), algorithms.md section 4.

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
carried across siblings. Lossless. Its acceptance has no closed form: :func:`acceptance_rrs_without_replacement`
returns an unbiased Monte Carlo estimate. When the k drafts exhaust q's support, the later q_i are
uniform over the tokens not yet drawn, matching :func:`fastdecode.verification.drafts.sample_drafts`.

Zero residuals (p_i == q_i, e.g. p == q) fall back to p_i; the draft is then accepted with
probability 1, so the fallback is never used for the output.
"""
from __future__ import annotations

import torch

from .common import VerifyResult, residual
from .drafts import check_k
from .sequential import AcceptanceEstimate, estimate, run


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
    return run(*plan_rrs(p, q, drafts), drafts, generator)


def verify_rrs_without_replacement(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator=None) -> VerifyResult:
    # p, q: [N, V]; drafts: [N, k] drawn without replacement from q, in draw order
    return run(*plan_rrs_without_replacement(p, q, drafts), drafts, generator)


def acceptance_rrs(p: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    """[N] exact: 1 - prod_{i=1..k} (1 - sum min(p_i, q)), p_{i+1} = norm(max(0, p_i - q))."""
    check_k(k, p.shape[1], "iid")
    pc, qd = p.double(), q.double()
    reject = torch.ones(p.shape[0], dtype=torch.float64, device=p.device)
    for _ in range(k):
        reject = reject * (1 - torch.minimum(pc, qd).sum(-1)).clamp_min(0)
        pc = residual(pc, qd)
    return 1 - reject


def acceptance_rrs_without_replacement(p: torch.Tensor, q: torch.Tensor, k: int, samples: int = 32,
                                       generator: torch.Generator | None = None) -> AcceptanceEstimate:
    """Unbiased Monte Carlo estimate (mean [N], stderr [N]): ``samples`` draft tuples per row drawn
    without replacement, each scored with its exact acceptance probability given the drafts."""
    check_k(k, p.shape[1], "without_replacement")
    return estimate(plan_rrs_without_replacement, p, q, k, "without_replacement", samples, generator)
