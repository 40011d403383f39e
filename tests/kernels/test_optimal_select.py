"""Triton kernel of the optimal verifier's selection step vs its torch reference, on the CPU under
TRITON_INTERPRET=1: bit-exact agreement (same uniforms), odd shapes, the vocabulary sizes that matter,
duplicate drafts, rows without pools, winners always in [0, k)."""
from __future__ import annotations

import os

import pytest
import torch

os.environ["TRITON_INTERPRET"] = "1"      # before triton is imported anywhere in this process
triton = pytest.importorskip("triton")

from fastdecode.kernels.optimal_select import optimal_select, optimal_select_reference  # noqa: E402
from fastdecode.verification.optimal import build_race, race_uniforms  # noqa: E402


def _args(st):
    return (st.ell, st.own, st.first, st.last, st.base, st.cum, st.left, st.right, st.xs, st.xd)


def _rows(N, V, seed, kind):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, V, generator=g, dtype=torch.float64) * 2
    p = logits.softmax(-1)
    if kind == "equal":                                  # p == q: no pools at all
        q = p.clone()
    else:
        q = (logits + 1.5 * torch.randn(N, V, generator=g, dtype=torch.float64)).softmax(-1)
    if kind == "zeros":                                  # zero-probability tokens in p and q
        p[:, ::3] = 0.0
        q[:, 1::4] = 0.0
        p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    return p, q, g


@pytest.mark.parametrize("N,V,k,kind", [
    (3, 5, 1, "mixed"),
    (4, 6, 3, "zeros"),
    (2, 100, 16, "mixed"),
    (3, 8193, 4, "zeros"),
    (2, 8192, 2, "equal"),
    (1, 151936, 8, "mixed"),
])
def test_kernel_matches_reference_bit_exact(N, V, k, kind):
    p, q, g = _rows(N, V, seed=V + k, kind=kind)
    st = build_race(p, q, k)
    drafts = torch.multinomial(q, k, replacement=True, generator=g)            # [N, k]
    drafts[:, -1] = drafts[:, 0]                                                # duplicates
    ranks = st.rank.gather(1, drafts)
    for rep in range(3):
        u = race_uniforms(N, k, g, "cpu")
        if rep == 2:                                                            # edges of [0, 1)
            u[..., 0] = torch.where(torch.rand(N, k, generator=g) < 0.5, 0.0, 1.0 - 2.0 ** -53)
        want = optimal_select_reference(ranks, u, *_args(st))
        got = optimal_select(ranks, u, *_args(st))
        assert got.dtype == torch.int64 and got.shape == (N,)
        assert ((got >= 0) & (got < k)).all()
        assert torch.equal(got, want), (got, want)


def test_kernel_exercises_pools():
    p = torch.tensor([[0.3, 0.3, 0.15, 0.1, 0.15, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.02, 0.08, 0.3, 0.3, 0.2, 0.1]], dtype=torch.float64)
    st = build_race(p.expand(16, -1).contiguous(), q.expand(16, -1).contiguous(), 4)
    g = torch.Generator().manual_seed(0)
    drafts = torch.multinomial(q[0], 16 * 4, replacement=True, generator=g).view(16, 4)
    ranks = st.rank.gather(1, drafts)
    u = race_uniforms(16, 4, g, "cpu")
    u[..., 0] = 0.999                      # past the own time mass: every draft of a pooled token searches
    assert bool((st.last.gather(1, ranks) >= 0).any()), "no draft of a pooled token: the case tests nothing"
    assert torch.equal(optimal_select(ranks, u, *_args(st)), optimal_select_reference(ranks, u, *_args(st)))


def test_host_function_validates():
    p = torch.full((2, 4), 0.25, dtype=torch.float64)
    st = build_race(p, p, 2)
    ranks = torch.zeros(2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="u must be"):
        optimal_select(ranks, torch.rand(2, 2, 3), *_args(st))
    with pytest.raises(ValueError, match="cum must be"):
        args = list(_args(st))
        args[5] = args[5][:, :-1]
        optimal_select(ranks, torch.rand(2, 2, 3, dtype=torch.float64), *args)
