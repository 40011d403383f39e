"""Interface of fastdecode.verification: shapes, dtypes, k = 1..16, large vocabularies, degenerate
inputs from the tree loop (N = 1, one-hot p and q, disjoint supports) and clear errors."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from fastdecode.verification import (METHODS, acceptance_probability, optimal_acceptance_rate, sample_drafts,
                                     verify)

HAS_OPTIMAL = importlib.util.find_spec("fastdecode.verification.optimal") is not None
MULTI = [m for m, info in METHODS.items() if not info.single_draft and (m != "optimal" or HAS_OPTIMAL)]


def _pair(n, v, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(n, v, generator=g, dtype=dtype) * 3, -1)
    q = torch.softmax(torch.randn(n, v, generator=g, dtype=dtype) * 3, -1)
    return p, q


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", MULTI)
def test_shapes_and_k_range(method, dtype):
    g = torch.Generator().manual_seed(1)
    for n, v, k in ((3, 50, 1), (2, 8193, 2), (4, 100, 16)):
        p, q = _pair(n, v, dtype)
        drafts = sample_drafts(q, k, METHODS[method].scheme, g)
        assert drafts.shape == (n, k) and drafts.dtype == torch.long
        res = verify(method, p, q, drafts, g)
        assert res.tokens.shape == res.accepted.shape == res.draft_index.shape == (n,)
        assert ((res.tokens >= 0) & (res.tokens < v)).all()
        assert res.lossy == (not METHODS[method].lossless)
        acc = acceptance_probability(method, p, q, k)
        mean = acc[0] if isinstance(acc, tuple) else acc
        assert mean.shape == (n,) and torch.isfinite(mean).all() and (mean >= -1e-9).all() and (mean <= 1 + 1e-9).all()


def test_large_vocabulary_float32():
    g = torch.Generator().manual_seed(2)
    p, q = _pair(1, 151_936, torch.float32)
    for method in MULTI:
        drafts = sample_drafts(q, 8, METHODS[method].scheme, g)
        res = verify(method, p, q, drafts, g)
        assert 0 <= int(res.tokens[0]) < 151_936


@pytest.mark.parametrize("method", MULTI)
def test_tree_loop_degenerate_inputs(method):
    # N = 1 nodes at temperature 0 and other corner cases: never NaN, always a valid, exact answer
    g = torch.Generator().manual_seed(3)
    one = lambda i, v=6: torch.nn.functional.one_hot(torch.tensor([i]), v).double()  # noqa: E731
    cases = [
        (one(2), one(2), 2),                                                    # p == q one-hot
        (one(2), one(4), None),                                                 # disjoint one-hot
        (one(2), torch.tensor([[0.1, 0.2, 0.3, 0.2, 0.1, 0.1]], dtype=torch.float64), 2),
        (torch.tensor([[0.5, 0.5, 0, 0, 0, 0]], dtype=torch.float64),
         torch.tensor([[0, 0, 0.5, 0.5, 0, 0]], dtype=torch.float64), None),   # disjoint supports
    ]
    for p, q, must in cases:
        for k in (1, 2, 3):
            for _ in range(5):
                drafts = sample_drafts(q, k, METHODS[method].scheme, g)
                res = verify(method, p, q, drafts, g)
                tok = int(res.tokens[0])
                assert 0 <= tok < 6 and float(p[0, tok]) > 0
                if must is not None and METHODS[method].lossless:
                    assert tok == must


def test_sample_drafts_schemes():
    g = torch.Generator().manual_seed(4)
    p, q = _pair(64, 30, torch.float64)
    wo = sample_drafts(q, 16, "without_replacement", g)
    assert (wo.sort(-1).values.diff(dim=-1) > 0).all()                      # distinct
    gr = sample_drafts(q, 5, "greedy", g)
    assert torch.equal(gr[:, :4], q.topk(4).indices)
    assert not (gr[:, 4:] == gr[:, :4]).any()
    # exhausted support: the first draws cover q's support, the rest are other tokens
    q0 = torch.zeros(1, 6, dtype=torch.float64)
    q0[0, [1, 4]] = 0.5
    d = sample_drafts(q0, 4, "without_replacement", g)[0].tolist()
    assert sorted(d[:2]) == [1, 4] and len(set(d)) == 4
    assert sample_drafts(q0, 3, "greedy", g)[0, :2].tolist() in ([1, 4], [4, 1])


def test_errors_name_the_problem():
    p, q = _pair(2, 10, torch.float64)
    d = sample_drafts(q, 2, "iid", torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="unknown verification method"):
        verify("nope", p, q, d)
    with pytest.raises(ValueError, match="unknown verification method"):
        acceptance_probability("nope", p, q, 2)
    with pytest.raises(ValueError, match="same shape"):
        verify("rrs", p, q[:, :9], d)
    with pytest.raises(ValueError, match=r"\[N, V\]"):
        verify("rrs", p[0], q[0], d)
    with pytest.raises(ValueError, match="not 1"):
        verify("rrs", p * 3, q, d)                                           # logits-like input
    with pytest.raises(ValueError, match="negative"):
        optimal_acceptance_rate(p - 0.05, q, 2)
    with pytest.raises(ValueError, match="exactly k = 1"):
        verify("speculative", p, q, d)
    with pytest.raises(ValueError, match="rows"):
        verify("rrs", p, q, d[:1])
    with pytest.raises(ValueError, match="unknown draft scheme"):
        sample_drafts(q, 2, "beam")
    with pytest.raises(ValueError, match="unknown draft scheme"):
        optimal_acceptance_rate(p, q, 2, "beam")
    with pytest.raises(ValueError, match="k must be"):
        optimal_acceptance_rate(p, q, 0)
    with pytest.raises(ValueError, match="k must be"):
        acceptance_probability("spectr", p, q, 1.5)
    with pytest.raises(ValueError, match="exceeds V"):
        sample_drafts(q, 11, "without_replacement")
    # drafts that could not come from the method's scheme
    with pytest.raises(ValueError, match="repeat a token"):
        verify("rrs_without_replacement", p, q, torch.tensor([[3, 3], [1, 2]]))
    qz = q.clone()
    qz[:, 7] = 0
    qz = qz / qz.sum(-1, keepdim=True)
    with pytest.raises(ValueError, match="q = 0"):
        verify("spectr", p, qz, torch.tensor([[7, 1], [1, 2]]))
    with pytest.raises(ValueError, match="without\\s+replacement|could not come"):
        verify("rrs_without_replacement", p, qz, torch.tensor([[7, 1], [1, 2]]))
    worst = q.argsort(-1)[:, :2]                                              # the least likely, not the top
    with pytest.raises(ValueError, match="most probable"):
        verify("greedy_draft", p, q, worst)
