"""Statistical tests on 10^5 batched samples: the emitted tokens of every lossless method follow p
(chi-square), deliberately broken rules fail the same test, and acceptance probabilities match the
empirical acceptance frequency."""
from __future__ import annotations

import importlib

import pytest
import torch

from fastdecode.verification import METHODS, acceptance_probability, sample_drafts, verify
from fastdecode.verification.primitives import residual
from fastdecode.verification.drafts import greedy_rest
from fastdecode.verification.rrs import acceptance_rrs_without_replacement, plan_rrs_without_replacement
from fastdecode.verification.sequential import run
from verification_cases import chi_square_pvalue

N = 100_000
P = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)      # the document's example
Q = torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15], dtype=torch.float64)
K = 3
LOSSLESS = [m for m, info in METHODS.items() if info.lossless and not info.single_draft]


def _batch(p=P, q=Q, n=N):
    return p.expand(n, -1).contiguous(), q.expand(n, -1).contiguous()


def _draw(method: str, k: int = K, p=P, q=Q, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pb, qb = _batch(p, q)
    drafts = sample_drafts(qb, k, METHODS[method].scheme, g)
    return pb, qb, drafts, g


@pytest.mark.parametrize("method", LOSSLESS)
def test_emitted_tokens_follow_p(method):
    pb, qb, drafts, g = _draw(method)
    res = verify(method, pb, qb, drafts, g)
    assert ((res.tokens >= 0) & (res.tokens < P.shape[0])).all()
    assert chi_square_pvalue(res.tokens, P) > 1e-3, method
    # the reported acceptance agrees with the empirical frequency of emitting a draft
    in_drafts = (drafts == res.tokens[:, None]).any(-1)
    assert torch.equal(res.accepted, in_drafts)
    assert torch.equal(res.draft_index >= 0, res.accepted)
    if method != "rrs_without_replacement":
        alpha = float(acceptance_probability(method, P[None], Q[None], K)[0])
        freq = float(res.accepted.double().mean())
        assert abs(freq - alpha) < 5 * (alpha * (1 - alpha) / N) ** 0.5, (method, freq, alpha)


def test_speculative_follows_p_and_its_acceptance():
    pb, qb, drafts, g = _draw("speculative", k=1)
    res = verify("speculative", pb, qb, drafts, g)
    assert chi_square_pvalue(res.tokens, P) > 1e-3
    alpha = float(torch.minimum(P, Q).sum())
    assert abs(float(res.accepted.double().mean()) - alpha) < 5 * (alpha * (1 - alpha) / N) ** 0.5


def test_rrs_without_replacement_estimate_matches_frequency():
    pb, qb, drafts, g = _draw("rrs_without_replacement")
    res = verify("rrs_without_replacement", pb, qb, drafts, g)
    est = acceptance_rrs_without_replacement(P[None], Q[None], K, samples=4000, generator=g)
    freq = float(res.accepted.double().mean())
    sd = (freq * (1 - freq) / N + float(est.stderr[0]) ** 2) ** 0.5
    assert float(est.stderr[0]) > 0
    assert abs(freq - float(est.mean[0])) < 5 * sd
    mean, stderr = est                                                   # unpacks as a pair
    assert mean.shape == stderr.shape == (1,)


# ------------------------------------------------------------------ broken rules fail the same test
def _sorted_siblings(pb, qb, drafts, g):
    order = qb.gather(1, drafts).argsort(-1, descending=True)            # pitfall (i)
    return run(*plan_rrs_without_replacement(pb, qb, drafts.gather(1, order)), drafts, g).tokens


def _p_not_carried(pb, qb, drafts, g):
    px, qx = pb.gather(1, drafts), qb.gather(1, drafts)                  # pitfall (iii)
    return run((px / qx).clamp_max(1), residual(pb, qb), drafts, g).tokens


def _greedy_with_q(pb, qb, drafts, g):
    # greedy drafts verified against q instead of q' (the distribution the last draft came from)
    last = drafts[:, -1:]
    acc = torch.cat([torch.zeros_like(drafts[:, :-1], dtype=torch.float64),
                     (pb.gather(1, last) / qb.gather(1, last)).clamp_max(1)], 1)
    return run(acc, residual(pb, qb), drafts, g).tokens


@pytest.mark.parametrize("broken,scheme", [(_sorted_siblings, "without_replacement"), (_p_not_carried, "iid"),
                                           (_greedy_with_q, "greedy")])
def test_broken_rules_fail(broken, scheme):
    g = torch.Generator().manual_seed(0)
    pb, qb = _batch()
    drafts = sample_drafts(qb, K, scheme, g)
    assert chi_square_pvalue(broken(pb, qb, drafts, g), P) < 1e-6


def test_typical_is_lossy_and_its_acceptance_is_exact():
    pb, qb, drafts, g = _draw("typical")
    res = verify("typical", pb, qb, drafts, g)
    assert res.lossy and "LOSSY" in importlib.import_module("fastdecode.verification.typical").__doc__
    assert chi_square_pvalue(res.tokens, P) < 1e-6                       # it does change the law here
    alpha = float(acceptance_probability("typical", P[None], Q[None], K)[0])
    freq = float(res.accepted.double().mean())
    assert abs(freq - alpha) < 5 * (alpha * (1 - alpha) / N) ** 0.5
    # temperature 0 (one-hot p): exact argmax matching
    p0 = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    out = verify("typical", p0, Q[None], torch.tensor([[0, 2, 1]]), g)
    assert int(out.tokens[0]) == 1 and bool(out.accepted[0]) and int(out.draft_index[0]) == 2
    out = verify("typical", p0, Q[None], torch.tensor([[0, 2, 3]]), g)
    assert int(out.tokens[0]) == 1 and not bool(out.accepted[0])


# ------------------------------------------------------------------ the draft schemes themselves
def test_sample_drafts_laws():
    g = torch.Generator().manual_seed(3)
    _, qb = _batch()
    iid = sample_drafts(qb, 2, "iid", g)
    assert chi_square_pvalue(iid[:, 1], Q) > 1e-3
    pair = iid[:, 0] * 5 + iid[:, 1]
    assert chi_square_pvalue(pair, (Q[:, None] * Q[None, :]).flatten()) > 1e-3
    wo = sample_drafts(qb, 2, "without_replacement", g)
    assert chi_square_pvalue(wo[:, 0], Q) > 1e-3
    second = Q[None, :] / (1 - Q[:, None]) * (1 - torch.eye(5, dtype=torch.float64))   # sequential, in order
    assert chi_square_pvalue(wo[:, 0] * 5 + wo[:, 1], (Q[:, None] * second).flatten()) > 1e-3
    # a sorted (not draw-order) output would fail
    srt = wo.sort(-1).values
    assert chi_square_pvalue(srt[:, 0] * 5 + srt[:, 1], (Q[:, None] * second).flatten()) < 1e-6
    gr = sample_drafts(qb, 3, "greedy", g)
    assert (gr[:, :2] == Q.topk(2).indices).all()
    rest = greedy_rest(Q[None], Q.topk(2).indices[None])[0]
    assert chi_square_pvalue(gr[:, 2], rest) > 1e-3
