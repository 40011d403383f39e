"""Helpers for the verification tests: small (p, q) cases, exact laws by enumerating draft tuples,
a batched chi-square test and the primal transport LP."""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from fastdecode.verification.greedy_draft import plan_greedy_draft
from fastdecode.verification.rrs import plan_rrs, plan_rrs_without_replacement
from fastdecode.verification.sequential import accept_given_drafts, output_law
from fastdecode.verification.spectr import plan_spectr

# lossless sequential rules: method -> (plan, draft scheme)
PLANS = {
    "rrs": (plan_rrs, "iid"),
    "rrs_without_replacement": (plan_rrs_without_replacement, "without_replacement"),
    "spectr": (plan_spectr, "iid"),
    "greedy_draft": (plan_greedy_draft, "greedy"),
}


def _norm(x) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=torch.float64)
    return x / x.sum()


def small_cases(seed: int = 0, n_random: int = 12) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(name, p, q) with V <= 6 covering the pitfalls: p == q, disjoint supports, one-hot p and q,
    zero-probability tokens, a q with fewer positive tokens than k."""
    g = torch.Generator().manual_seed(seed)
    cases = [
        ("doc-example", _norm([0.5, 0.2, 0.15, 0.1, 0.05]), _norm([0.1, 0.3, 0.2, 0.25, 0.15])),
        ("p==q", _norm([0.4, 0.3, 0.2, 0.1]), _norm([0.4, 0.3, 0.2, 0.1])),
        ("disjoint", _norm([0.6, 0.4, 0, 0, 0]), _norm([0, 0, 0.5, 0.3, 0.2])),
        ("one-hot-p", _norm([0, 0, 1, 0, 0, 0]), _norm([0.3, 0.1, 0.2, 0.2, 0.1, 0.1])),
        ("one-hot-both", _norm([0, 1, 0, 0]), _norm([0, 0, 0, 1])),
        ("one-hot-same", _norm([0, 1, 0, 0]), _norm([0, 1, 0, 0])),
        ("zeros", _norm([0.5, 0, 0.3, 0.2, 0]), _norm([0.2, 0.4, 0, 0.3, 0.1])),
        ("short-support", _norm([0.2, 0.3, 0.1, 0.4, 0]), _norm([0.7, 0, 0, 0.3, 0])),
        ("tiny-q", _norm([0.3, 0.3, 0.2, 0.2]), _norm([1 - 2e-9, 1e-9, 1e-9, 0])),
    ]
    for i in range(n_random):
        v = 2 + i % 5
        p = torch.rand(v, generator=g, dtype=torch.float64) ** 3
        q = torch.rand(v, generator=g, dtype=torch.float64) ** 3
        if i % 3 == 0:
            p[i % v] = 0
        if i % 4 == 1:
            q[(i + 1) % v] = 0
        cases.append((f"random{i}", _norm(p), _norm(q)))
    return cases


def draft_tuples(q: torch.Tensor, k: int, scheme: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every draft tuple of the scheme with positive probability: (drafts [T, k], prob [T]).
    Written independently of drafts.py, from the scheme definitions."""
    qs, v = q.tolist(), len(q)
    out = []
    if scheme == "iid":
        for t in itertools.product(range(v), repeat=k):
            out.append((t, math.prod(qs[x] for x in t)))
    elif scheme == "without_replacement":
        for t in itertools.permutations(range(v), k):
            pr, used = 1.0, set()
            for x in t:
                left = [i for i in range(v) if i not in used]
                mass = sum(qs[i] for i in left)
                pr *= qs[x] / mass if mass > 0 else 1.0 / len(left)   # exhausted support: uniform
                used.add(x)
            out.append((t, pr))
    else:
        top = q.topk(k - 1).indices.tolist() if k > 1 else []    # torch.topk's tie-breaking, as drafts.py
        rest = [i for i in range(v) if i not in top]
        mass = sum(qs[i] for i in rest)
        for x in rest:
            out.append((tuple(top) + (x,), qs[x] / mass if mass > 0 else 1.0 / len(rest)))
    out = [(t, pr) for t, pr in out if pr > 0]
    return torch.tensor([t for t, _ in out]), torch.tensor([pr for _, pr in out], dtype=torch.float64)


def exact(plan, scheme: str, p: torch.Tensor, q: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    """(output law [V], acceptance) of a sequential rule, by enumerating all draft tuples."""
    d, w = draft_tuples(q, k, scheme)
    n, v = d.shape[0], p.shape[0]
    acc, res = plan(p.expand(n, v), q.expand(n, v), d)
    law = (output_law(acc, res, d) * w[:, None]).sum(0)
    return law, float((accept_given_drafts(acc, res, d) * w).sum())


def chi_square_pvalue(tokens: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> float:
    """Pearson chi-square p-value of the token histogram against probs [V] (small cells pooled; a token
    with zero probability gives 0)."""
    from scipy.stats import chi2

    v = probs.shape[0]
    counts = torch.bincount(tokens, minlength=v).double()
    n = float(counts.sum())
    if (counts[probs <= 0] > 0).any():
        return 0.0
    exp = probs * n
    big = exp >= min_expected
    obs_c, exp_c = counts[big].tolist(), exp[big].tolist()
    if (~big).any() and float(exp[~big].sum()) > 0:
        obs_c.append(float(counts[~big].sum()))
        exp_c.append(float(exp[~big].sum()))
    obs_a, exp_a = np.array(obs_c), np.array(exp_c)
    stat = float(((obs_a - exp_a) ** 2 / exp_a).sum())
    return float(chi2.sf(stat, max(len(obs_a) - 1, 1)))


def transport_lp(p: torch.Tensor, q: torch.Tensor, k: int, scheme: str) -> float:
    """Primal LP: max sum pi(x, y) 1[y in x] over couplings of the draft-tuple law and p
    (scipy.optimize.linprog, HiGHS)."""
    from scipy.optimize import linprog

    d, w = draft_tuples(q, k, scheme)
    t, v = d.shape[0], p.shape[0]
    hit = np.zeros((t, v))
    for i, tup in enumerate(d.tolist()):
        hit[i, list(set(tup))] = 1.0
    a_eq = np.zeros((t + v, t * v))
    for i in range(t):
        a_eq[i, i * v:(i + 1) * v] = 1.0        # sum_y pi(x, y) = Q(x)
    for y in range(v):
        a_eq[t + y, y::v] = 1.0                 # sum_x pi(x, y) = p(y)
    b_eq = np.concatenate([w.numpy(), p.numpy()])
    b_eq[t:] *= b_eq[:t].sum()                  # exact equal totals for the solver
    # HiGHS presolve wrongly declares some of these (tiny tuple probabilities) infeasible
    res = linprog(-hit.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs", options={"presolve": False})
    assert res.status == 0, res.message
    return -res.fun
