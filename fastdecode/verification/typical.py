"""Medusa's typical acceptance (Cai et al., "Medusa", 2024; FasterDecoding/Medusa utils.py),
docs/algorithms.md section 4. **LOSSY**: the output is *not* distributed as p, and results carry
``VerifyResult.lossy = True``.

A draft x passes when p(x) > min(eps, delta * exp(-H(p))), H(p) the entropy of p in nats,
eps = posterior_threshold = 0.09, delta = posterior_alpha = 0.3. Among the passing drafts the one with
the largest p is emitted (ties: the earliest draft), as Medusa keeps the candidate with the largest
log-probability. When no draft passes, the token is drawn from p itself (Medusa falls back to the
target's own token). With one-hot p (temperature 0) this is exact argmax matching.

Acceptance (the emitted token is one of the k i.i.d. drafts), with A the set of passing tokens:
1 - (1 - q(A))^k + sum_{x not in A} p(x) [(1 - q(A))^k - (1 - q(A) - q(x))^k], exact: the second term is a
fallback token that happens to equal a (non-passing) draft.
"""
from __future__ import annotations

import torch

from .primitives import VerifyResult
from .drafts import categorical, check_k

POSTERIOR_THRESHOLD = 0.09
POSTERIOR_ALPHA = 0.3


def passing(p: torch.Tensor, posterior_threshold: float = POSTERIOR_THRESHOLD,
            posterior_alpha: float = POSTERIOR_ALPHA) -> torch.Tensor:
    """[N, V] bool: the tokens typical acceptance accepts. p: [N, V]."""
    pd = p.double()
    entropy = -(pd * pd.clamp_min(1e-300).log()).sum(-1, keepdim=True)      # nats, 0 log 0 = 0
    thr = torch.clamp(posterior_alpha * torch.exp(-entropy), max=posterior_threshold)
    return pd > thr


def verify_typical(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator=None, *,
                   posterior_threshold: float = POSTERIOR_THRESHOLD,
                   posterior_alpha: float = POSTERIOR_ALPHA) -> VerifyResult:
    """LOSSY typical acceptance. p, q: [N, V]; drafts: [N, k] i.i.d. from q (q is not used by the rule)."""
    x = drafts.long()
    ok = passing(p, posterior_threshold, posterior_alpha).gather(1, x)       # [N, k]
    px = torch.where(ok, p.double().gather(1, x), torch.full(x.shape, -1.0, dtype=torch.float64, device=x.device))
    best = px.argmax(-1)                                                     # first maximum
    chosen = x.gather(1, best[:, None])[:, 0]
    y = categorical(p, generator, 1)[:, 0]
    accepted = ok.any(-1)
    tokens = torch.where(accepted, chosen, y)
    match = x == tokens[:, None]
    index = torch.where(accepted, best, torch.where(match.any(-1), match.long().argmax(-1), -1))
    return VerifyResult(tokens, index >= 0, index, lossy=True)


def acceptance_typical(p: torch.Tensor, q: torch.Tensor, k: int, *,
                       posterior_threshold: float = POSTERIOR_THRESHOLD,
                       posterior_alpha: float = POSTERIOR_ALPHA) -> torch.Tensor:
    """[N] exact probability that the emitted token is one of k i.i.d. drafts (module docstring)."""
    return acceptance_typical_many(p, q, [k], posterior_threshold=posterior_threshold,
                                   posterior_alpha=posterior_alpha)[0]


def acceptance_typical_many(p: torch.Tensor, q: torch.Tensor, ks: list[int], *,
                            posterior_threshold: float = POSTERIOR_THRESHOLD,
                            posterior_alpha: float = POSTERIOR_ALPHA) -> torch.Tensor:
    """[len(ks), N] acceptance_typical for several k."""
    for k in ks:
        check_k(k, p.shape[1], "iid")
    pd, qd = p.double(), q.double()
    a = passing(pd, posterior_threshold, posterior_alpha)
    miss = (1 - torch.where(a, qd, torch.zeros_like(qd)).sum(-1, keepdim=True)).clamp(0.0, 1.0)   # 1 - q(A)
    p_out = torch.where(a, torch.zeros_like(pd), pd)                                               # p outside A
    log_miss_x = (miss - qd).clamp_min(0).log()                                                   # log 0 = -inf
    out = []
    for k in ks:
        none = miss ** k
        out.append(1 - none[:, 0] + (p_out * (none - torch.exp(k * log_miss_x))).sum(-1))
    return torch.stack(out)
