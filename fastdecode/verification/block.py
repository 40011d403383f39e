"""Block verification of one drafted chain (Sun et al., "Block Verification Accelerates Speculative
Decoding", ICLR 2025), docs/verifiers.md section 2.

Token-by-token verification stops at the first rejected draft. Block verification decides on the whole
block of gamma drafts jointly: it keeps the LONGEST prefix whose test passes, where the test at
position i depends on the whole prefix through the weight w_i. With p_i = p(.|X_<i), q_i = q(.|X_<i)
and independent uniforms eta_i:

    w_0 = 1,  w_i = min(1, w_{i-1} p_i(X_i) / q_i(X_i))
    h_i = S_i / (S_i + 1 - w_i),  S_i = sum_x max(0, w_i p_{i+1}(x) - q_{i+1}(x))   (i < gamma; 1 if 0/0)
    h_gamma = w_gamma
    kept = the last i with eta_i <= h_i (0 if none): keep X_1..X_kept
    next token ~ p_{gamma+1} if kept = gamma, else norm(max(0, w_kept p_{kept+1} - q_{kept+1}))

Lossless (the first gamma + 1 emitted tokens follow the target's joint law) and never worse than
token-by-token in expected accepted length; the paper shows it is optimal among verifiers of a single
draft block. Terms: accepted = the kept drafts (their number: ``kept``), the next token is a residual (kept < gamma) or the
bonus (kept = gamma), as in docs/algorithms.md.
"""
from __future__ import annotations

import torch

from .primitives import sample, uniform


def block_weights(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p: [N, gamma+1, V], q: [N, gamma, V], drafts: [N, gamma]. Returns (w [N, gamma+1] with w[:, 0] = 1, h [N, gamma]), float64."""
    N, gamma = drafts.shape
    x = drafts.long()[..., None]
    px = p[:, :gamma].gather(2, x)[..., 0].double()
    qx = q.gather(2, x)[..., 0].double()
    ratio = torch.where(qx > 0, px / torch.where(qx > 0, qx, torch.ones_like(qx)),
                        torch.where(px > 0, torch.full_like(px, float("inf")), torch.zeros_like(px)))
    w = [torch.ones(N, dtype=torch.float64, device=p.device)]
    for i in range(gamma):                                              # gamma steps, vectorised over rows
        w.append(torch.clamp_max(w[-1] * ratio[:, i], 1.0).nan_to_num(1.0))   # inf * 0 = nan -> 1 (p/q = inf)
    w = torch.stack(w, 1)                                           # [N, gamma+1]
    h = w[:, 1:].clone()                                            # h_gamma = w_gamma
    if gamma > 1:
        wi = w[:, 1:gamma]                                              # w_1..w_{gamma-1}
        S = (wi[..., None] * p[:, 1:gamma].double() - q[:, 1:gamma].double()).clamp_min(0.0).sum(-1)   # [N, gamma-1]
        den = S + 1.0 - wi
        h[:, : gamma - 1] = torch.where(den > 0, S / torch.where(den > 0, den, torch.ones_like(den)), torch.ones_like(den))
    return w, h


def block_kept_length(h: torch.Tensor, eta: torch.Tensor) -> torch.Tensor:
    """[N] long: the last position i (1-based) with eta_i <= h_i, 0 if none. h, eta: [N, gamma]."""
    gamma = h.shape[1]
    i = torch.arange(1, gamma + 1, device=h.device)
    return torch.where(eta <= h, i, torch.zeros_like(i)).amax(-1) if gamma else h.new_zeros(h.shape[0], dtype=torch.long)


def block_next_weights(p: torch.Tensor, q: torch.Tensor, w: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """[N, V] float64 unnormalised law of the token after the kept drafts: p_{gamma+1} if kept = gamma, else
    max(0, w_kept p_{kept+1} - q_{kept+1}) (p_{kept+1} if that is all zero, which has probability 0)."""
    N, gamma = q.shape[0], q.shape[1]
    rows = torch.arange(N, device=p.device)
    pn = p[rows, kept].double()
    qn = q[rows, kept.clamp_max(max(gamma - 1, 0))].double() if gamma else torch.zeros_like(pn)
    wt = w[rows, kept][:, None]
    r = (wt * pn - qn).clamp_min(0.0)
    r = torch.where((kept == gamma)[:, None], pn, r)
    empty = r.sum(-1, keepdim=True) <= 0
    return torch.where(empty, pn, r)


def verify_block_batched(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator=None):
    """Block verification of N independent chains. p: [N, gamma+1, V]; q: [N, gamma, V]; drafts: [N, gamma].
    Returns (n_accepted [N] long, next_token [N] long)."""
    if p.dim() != 3 or q.dim() != 3 or drafts.dim() != 2:
        raise ValueError(f"need p [N, gamma+1, V], q [N, gamma, V], drafts [N, gamma]; got {tuple(p.shape)}, "
                         f"{tuple(q.shape)}, {tuple(drafts.shape)}")
    N, gamma = drafts.shape
    if p.shape[:2] != (N, gamma + 1) or q.shape != (N, gamma, p.shape[2]):
        raise ValueError(f"shapes disagree: p {tuple(p.shape)} must be [N, gamma+1, V] and q {tuple(q.shape)} "
                         f"[N, gamma, V] with drafts {tuple(drafts.shape)} = [N, gamma]")
    w, h = block_weights(p, q, drafts)
    eta = uniform(N * gamma, generator, p.device).view(N, gamma)
    kept = block_kept_length(h, eta)
    nxt = sample(block_next_weights(p, q, w, kept), generator)
    return kept, nxt


def verify_block(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator=None) -> tuple[int, int]:
    """Block verification of one drafted chain, a drop-in for speculative.verify_chain.

    p: [gamma + 1, V] target distributions after each prefix; q: [gamma, V] draft distributions the
    drafts were sampled from; drafts: [gamma]. Returns (number of accepted drafts, next token).
    """
    if p.dim() != 2 or q.dim() != 2 or drafts.dim() != 1:
        raise ValueError(f"need p [gamma+1, V], q [gamma, V], drafts [gamma]; got {tuple(p.shape)}, "
                         f"{tuple(q.shape)}, {tuple(drafts.shape)}")
    n, nxt = verify_block_batched(p[None], q[None], drafts[None], generator)
    return int(n[0]), int(nxt[0])
