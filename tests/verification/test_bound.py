"""optimal_acceptance_rate against the primal transport LP (scipy linprog) and an independent
enumeration, and its behaviour at scale (batched rows, float32, large vocabularies)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from fastdecode.verification import METHODS, acceptance_probability, optimal_acceptance_rate
from fastdecode.verification.rrs import acceptance_rrs_without_replacement
from verification_cases import draft_tuples, small_cases, transport_lp

def _random_pair(v: int, n: int, seed: int, scale: float = 2.5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, v, generator=g, dtype=torch.float64) * scale
    p = torch.softmax(logits, -1)
    q = torch.softmax(logits + torch.randn(n, v, generator=g, dtype=torch.float64), -1)
    return p.to(dtype), q.to(dtype)


@pytest.mark.parametrize("scheme", ["iid", "without_replacement", "greedy"])
def test_equals_transport_lp(scheme):
    cases = small_cases(seed=1, n_random=10)
    for name, p, q in cases:
        for k in (2, 3):
            if scheme != "iid" and k > p.shape[0]:
                continue
            if scheme == "iid" and p.shape[0] ** k > 200:
                continue                                          # keep the LP small
            lp = transport_lp(p, q, k, scheme)
            ours = float(optimal_acceptance_rate(p[None], q[None], k, scheme)[0])
            assert abs(ours - lp) < 1e-7, (scheme, name, k, ours, lp)


def test_without_replacement_prefix_values_are_exact():
    # V = 9 with tiny and zero q: compare the integral with exact Q(X in H) for every subset H,
    # i.e. also checks that the best H is a prefix of the tokens sorted by p / q
    g = torch.Generator().manual_seed(5)
    for trial in range(3):
        v, k = 9, 3
        p = torch.rand(v, generator=g, dtype=torch.float64) ** 4
        q = torch.rand(v, generator=g, dtype=torch.float64) ** 6
        q[trial] = 1e-10
        q[trial + 3] = 0
        p, q = p / p.sum(), q / q.sum()
        d, w = draft_tuples(q, k, "without_replacement")
        best = 0.0
        for mask in itertools.product([False, True], repeat=v):
            inside = torch.tensor(mask)
            qh = float(w[inside[d].all(-1)].sum())
            best = max(best, qh - float(p[inside].sum()))
        ours = float(optimal_acceptance_rate(p[None], q[None], k, "without_replacement")[0])
        assert abs(ours - (1 - best)) < 1e-12, (trial, ours, 1 - best)


def test_methods_never_beat_their_optimum():
    p, q = _random_pair(40, 12, seed=2, scale=2.0)
    g = torch.Generator().manual_seed(0)
    for k in (2, 4, 8):
        best = {s: optimal_acceptance_rate(p, q, k, s) for s in ("iid", "without_replacement", "greedy")}
        for method, info in METHODS.items():
            if not info.lossless or info.single_draft:
                continue
            if method == "rrs_without_replacement":
                est = acceptance_rrs_without_replacement(p, q, k, samples=64, generator=g)
                assert (est.mean - 5 * est.stderr <= best[info.scheme] + 1e-12).all()
                continue
            acc = acceptance_probability(method, p, q, k)
            assert (acc <= best[info.scheme] + 1e-9).all(), method
            if method == "spectr":
                assert (acc >= (1 - 1 / math.e) * best["iid"]).all()
            if method == "optimal":
                assert torch.allclose(acc.double(), best["iid"], atol=1e-9, rtol=0)


def test_batched_rows_dtypes_and_float32():
    p, q = _random_pair(400, 5, seed=3)
    for scheme, k in (("iid", 4), ("without_replacement", 4), ("greedy", 4), ("without_replacement", 16)):
        full = optimal_acceptance_rate(p, q, k, scheme)
        assert full.dtype == torch.float64 and full.shape == (5,)
        one = torch.cat([optimal_acceptance_rate(p[i : i + 1], q[i : i + 1], k, scheme) for i in range(5)])
        assert torch.allclose(full, one, atol=1e-12, rtol=0)
        f32 = optimal_acceptance_rate(p.float(), q.float(), k, scheme)
        assert torch.allclose(full, f32, atol=1e-5, rtol=0)
        # a bigger quadrature memory budget changes the batching, not the answer
        assert torch.allclose(full, optimal_acceptance_rate(p, q, k, scheme, max_elements=1 << 16), atol=1e-12)


def test_without_replacement_beats_iid_and_grows_with_k():
    p, q = _random_pair(500, 4, seed=4)
    prev = torch.minimum(p, q).sum(-1)
    for k in (2, 4, 8):
        iid = optimal_acceptance_rate(p, q, k, "iid")
        wo = optimal_acceptance_rate(p, q, k, "without_replacement")
        assert (wo >= iid - 1e-12).all() and (iid >= prev - 1e-12).all()
        prev = iid


def test_large_vocabulary_and_exhausted_support():
    p, q = _random_pair(151_936, 1, seed=6, scale=3.0, dtype=torch.float32)
    a = optimal_acceptance_rate(p, q, 16, "iid")
    assert 0 < float(a) <= 1
    # fewer positive q tokens than drafts (temperature 0 / top-k): the closed form for that case
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    assert abs(float(optimal_acceptance_rate(p, q, 1, "without_replacement")) - 0.2) < 1e-12
    lp = transport_lp(p[0], q[0], 3, "without_replacement")
    assert abs(float(optimal_acceptance_rate(p, q, 3, "without_replacement")) - lp) < 1e-7


def test_many_k_helpers_equal_single_calls():
    from fastdecode.verification.bound import optimal_acceptance_rate_many
    from fastdecode.verification.greedy_draft import acceptance_greedy_draft, acceptance_greedy_draft_many
    from fastdecode.verification.rrs import acceptance_rrs, acceptance_rrs_many
    from fastdecode.verification.spectr import acceptance_spectr, acceptance_spectr_many
    from fastdecode.verification.typical import acceptance_typical, acceptance_typical_many

    p, q = _random_pair(300, 3, seed=7)
    ks = [1, 2, 4, 8]
    for many, one in ((acceptance_rrs_many, acceptance_rrs), (acceptance_spectr_many, acceptance_spectr),
                      (acceptance_typical_many, acceptance_typical),
                      (acceptance_greedy_draft_many, acceptance_greedy_draft)):
        assert torch.allclose(many(p, q, ks), torch.stack([one(p, q, k) for k in ks]), atol=1e-15, rtol=0)
    for scheme in ("iid", "without_replacement", "greedy"):
        single = torch.stack([optimal_acceptance_rate(p, q, k, scheme) for k in ks])
        assert torch.allclose(optimal_acceptance_rate_many(p, q, ks, scheme), single, atol=1e-15, rtol=0)


@pytest.mark.parametrize("V,k", [(2, 2), (3, 4), (50, 3), (1000, 8), (32000, 16)])
def test_spectr_rho_star_is_the_smallest_valid_rho(V, k):
    """K-SEQ's rho* from the sorted table's multi-way search: beta(rho*) is the direct sum, rho* satisfies
    1 - (1 - beta)^k <= rho beta (valid: the residual keeps no negative mass), and a rho 1e-9 below it does not
    (or rho* = 1): the smallest valid rho, as the sequential bisection over the direct sums finds it."""
    from fastdecode.verification.spectr import rho_star

    p, q = _random_pair(V, 8, seed=V + k, scale=3.0)
    q[1, : V // 2] = 0.0   # tokens only p has, and only q has
    q[1] /= q[1].sum()
    p[2, V // 2 :] = 0.0
    p[2] /= p[2].sum()
    p, q = p.double(), q.double()
    rho, beta = rho_star(p, q, k)
    direct = lambda r: torch.minimum(q, p / r[:, None]).sum(-1)   # noqa: E731
    assert torch.allclose(beta, direct(rho), atol=1e-12, rtol=0)
    assert ((1 - rho) <= 0).all() and (rho <= k).all()
    assert (-torch.expm1(k * torch.log1p(-beta)) <= rho * beta).all()
    below = rho * (1 - 1e-9)
    b = direct(below)
    assert ((-torch.expm1(k * torch.log1p(-b)) > below * b) | (rho - 1 < 1e-9)).all()
    assert (rho > 1 + 1e-6).any()   # not all trivial
