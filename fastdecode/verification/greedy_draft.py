"""Greedy draft sampling and its optimal verifier (Hu, Zheng, Viswanathan, Chen, Rossi, Wu,
Manocha, Huang, "Towards Optimal Multi-draft Speculative Decoding", ICLR'25), docs/algorithms.md section 3.

Drafts: D = the k-1 most probable tokens of q (deterministic), plus one draft x_k drawn from
q' = q restricted to the other tokens and renormalised (see drafts.py). Verifier: accept x_k with
probability min(1, p(x_k) / q'(x_k)); otherwise draw r proportional to p(y) for y in D and to
max(0, p(y) - q'(y)) for y outside D. A residual token in D is one of the drafts, so it counts as
accepted. Lossless: the output law is min(p, q') outside D plus the residual, which sums to p.
Acceptance alpha = p(D) + sum_{x not in D} min(p(x), q'(x)); no verifier can do better with these
drafts (the coupling bound), so it equals the optimum for the greedy scheme. For k = 1 it is
speculative sampling. (The construction of the verifier is the document's [derived, LP-verified].)
"""
from __future__ import annotations

import torch

from .primitives import VerifyResult, normalize_or
from .drafts import check_k, greedy_rest
from .sequential import run


def plan_greedy_draft(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor):
    """(acc [N, k], res [N, V]): acc is 0 for the k-1 deterministic drafts (they are kept only
    through the residual) and min(1, p / q') for the sampled last draft."""
    pd = p.double()
    x = drafts.long()
    top, last = x[:, :-1], x[:, -1:]
    qr = greedy_rest(q, top)                                              # q' [N, V]
    px, qx = pd.gather(1, last), qr.gather(1, last)
    a_last = torch.where(qx > 0, (px / qx.clamp_min(1e-300)).clamp_max(1.0), torch.zeros_like(px))
    acc = torch.cat([torch.zeros_like(top, dtype=torch.float64), a_last], 1)
    in_d = torch.zeros_like(pd, dtype=torch.bool).scatter_(1, top, True)
    res = torch.where(in_d, pd, (pd - qr).clamp_min(0))
    return acc, normalize_or(res, pd)  # p == q' outside D, p(D) = 0


def verify_greedy_draft(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator=None) -> VerifyResult:
    # p, q: [N, V]; drafts: [N, k] = top k-1 of q, then one draw from q'
    return run(*plan_greedy_draft(p, q, drafts), drafts, generator)


def acceptance_greedy_draft(p: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    """[N] exact: p(D) + sum_{x not in D} min(p(x), q'(x)), D = top k-1 of q (torch.topk ties)."""
    check_k(k, p.shape[1], "greedy")
    return acceptance_greedy_draft_many(p, q, [k])[0]


def acceptance_greedy_draft_many(p: torch.Tensor, q: torch.Tensor, ks: list[int]) -> torch.Tensor:
    """[len(ks), N] acceptance_greedy_draft for several k, with one top-k of q."""
    for k in ks:
        check_k(k, p.shape[1], "greedy")
    pd, qd = p.double(), q.double()
    top = qd.topk(max(ks) - 1, dim=-1).indices                                  # [N, kmax - 1], descending q
    p_top, q_top = pd.gather(1, top), qd.gather(1, top)
    out = []
    for k in ks:
        d = k - 1
        p_d = p_top[:, :d].sum(-1, keepdim=True)
        rest = qd.sum(-1, keepdim=True) - q_top[:, :d].sum(-1, keepdim=True)   # q mass outside D
        if bool((rest <= 0).any()):                                             # exhausted: the exact q'
            qr = greedy_rest(qd, top[:, :d])
            in_d = torch.zeros_like(pd, dtype=torch.bool).scatter_(1, top[:, :d], True)
            out.append(torch.where(in_d, pd, torch.minimum(pd, qr)).sum(-1))
            continue
        # sum over x outside D of min(p, q / rest) = sum over all x - sum over D
        scaled = qd / rest
        inside = torch.minimum(p_top[:, :d], q_top[:, :d] / rest).sum(-1)
        out.append(p_d[:, 0] + torch.minimum(pd, scaled).sum(-1) - inside)
    return torch.stack(out)
