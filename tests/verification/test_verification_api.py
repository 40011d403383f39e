"""Interface of fastdecode.verification: shapes, dtypes, k = 1..16, large vocabularies, degenerate
inputs from the tree loop (N = 1, one-hot p and q, disjoint supports) and clear errors."""
from __future__ import annotations

import pytest
import torch

from fastdecode.verification import (METHODS, acceptance_probability, optimal_acceptance_rate, sample_drafts,
                                     verify)

MULTI = [m for m, info in METHODS.items() if not info.single_draft]


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


def _k(method, k=2):
    return 1 if METHODS[method].single_draft else k


@pytest.mark.parametrize("method", list(METHODS))
def test_inputs_that_track_gradients(method):
    g = torch.Generator().manual_seed(5)
    p, q = (t.requires_grad_() for t in _pair(3, 40, torch.float32))
    drafts = sample_drafts(q.detach(), _k(method), METHODS[method].scheme, g)
    res = verify(method, p, q, drafts, g)
    assert res.tokens.shape == (3,)
    acc = acceptance_probability(method, p, q, _k(method))
    mean = acc[0] if isinstance(acc, tuple) else acc
    assert mean.shape == (3,) and ((mean >= 0) & (mean <= 1)).all()
    if method == "speculative":  # differentiable where the rule is: sum min(p, q)
        mean.sum().backward()
        assert p.grad is not None and torch.isfinite(p.grad).all()


def test_optimal_acceptance_rate_tracks_gradients():
    p, q = (t.requires_grad_() for t in _pair(2, 40, torch.float32))
    for scheme in ("iid", "without_replacement", "greedy"):
        a = optimal_acceptance_rate(p, q, 3, scheme)
        assert a.shape == (2,) and ((a >= 0) & (a <= 1)).all()


def test_row_sum_tolerance_is_tight_at_large_vocabularies():
    from fastdecode.verification.primitives import row_sum_tolerance
    v = 152_064
    p = torch.rand(1, v)
    p = p / p.sum()
    assert acceptance_probability("speculative", p, p, 1).item() == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="sums to 1.0[23].*, not 1 \\(tolerance"):
        acceptance_probability("speculative", p * 1.03, p, 1)
    assert row_sum_tolerance(torch.float32, v) < 1e-3
    assert row_sum_tolerance(torch.float32, 8192) < 1e-4 and row_sum_tolerance(torch.bfloat16, 8192) < 1e-2


BF16 = torch.softmax(torch.randn(16, 300, generator=torch.Generator().manual_seed(6)) * 8, -1).bfloat16()


@pytest.mark.parametrize("method", list(METHODS))
def test_results_are_clamped_to_probabilities(method):
    # bfloat16 rows miss 1 by up to half an ulp per entry: acceptance must still be a probability
    acc = acceptance_probability(method, BF16, BF16, _k(method, 3))
    mean = acc[0] if isinstance(acc, tuple) else acc
    assert ((mean >= 0) & (mean <= 1)).all()


def test_optimal_rate_is_clamped_to_probabilities():
    from fastdecode.verification.greedy_draft import acceptance_greedy_draft
    assert acceptance_greedy_draft(BF16.double(), BF16.double(), 3).max() > 1  # unclamped: 1.0024
    assert acceptance_probability("greedy_draft", BF16, BF16, 3).max() == 1
    for scheme in ("iid", "without_replacement", "greedy"):
        a = optimal_acceptance_rate(BF16, BF16, 3, scheme)
        assert ((a >= 0) & (a <= 1)).all()


def test_optimal_acceptance_rate_rejects_rows_and_lists():
    p, q = _pair(2, 10, torch.float64)
    with pytest.raises(ValueError, match=r"\[N, V\] tensor, got shape \(10,\) \(for one distribution pass p\[None\]\)"):
        optimal_acceptance_rate(p[0], q[0], 2)
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        optimal_acceptance_rate(p.tolist(), q.tolist(), 2)
    with pytest.raises(ValueError, match="must be a torch.Tensor"):
        acceptance_probability("rrs", p.tolist(), q, 2)


@pytest.mark.parametrize("method", list(METHODS))
def test_zero_rows_give_empty_results(method):
    e = torch.zeros(0, 10, dtype=torch.float64)
    res = verify(method, e, e, torch.zeros(0, _k(method), dtype=torch.long))
    assert res.tokens.shape == res.accepted.shape == res.draft_index.shape == (0,)
    acc = acceptance_probability(method, e, e, _k(method))
    assert (acc[0] if isinstance(acc, tuple) else acc).shape == (0,)
    assert optimal_acceptance_rate(e, e, 2).shape == (0,)


def test_generator_and_k_types():
    p, q = _pair(2, 10, torch.float64)
    d = sample_drafts(q, 2, "iid", torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="generator must be a torch.Generator or None, got int"):
        verify("rrs", p, q, d, 3)
    with pytest.raises(ValueError, match="generator must be a torch.Generator or None, got int"):
        sample_drafts(q, 2, "iid", 3)
    for method in METHODS:
        with pytest.raises(ValueError, match="k must be an int >= 1, got True"):
            acceptance_probability(method, p, q, True)
    with pytest.raises(ValueError, match="k must be"):
        optimal_acceptance_rate(p, q, True)
