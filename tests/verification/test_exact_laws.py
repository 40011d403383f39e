"""Exactness of every lossless multi-draft rule by full enumeration of the draft tuples (V <= 6,
k <= 3), closed-form acceptances against the enumeration, and the documented pitfalls."""
from __future__ import annotations

import pytest
import torch

from fastdecode.verification import acceptance_probability, optimal_acceptance_rate
from fastdecode.verification.primitives import residual
from fastdecode.verification.rrs import plan_rrs_without_replacement
from verification_cases import PLANS, exact, small_cases

CASES = small_cases()


def _fits(scheme: str, k: int, v: int) -> bool:
    return scheme == "iid" or k <= v


@pytest.mark.parametrize("method", sorted(PLANS))
def test_output_law_is_p(method):
    plan, scheme = PLANS[method]
    checked = 0
    for name, p, q in CASES:
        for k in (1, 2, 3):
            if not _fits(scheme, k, p.shape[0]):
                continue
            law, _ = exact(plan, scheme, p, q, k)
            err = float((law - p).abs().max())
            assert err < 1e-9, (method, name, k, law.tolist(), p.tolist())
            checked += 1
    assert checked >= 2 * len(CASES)  # every case was enumerated (k = 1 and 2 always fit: V >= 2)


@pytest.mark.parametrize("method", ["rrs", "spectr", "greedy_draft"])
def test_closed_form_acceptance_equals_enumeration(method):
    plan, scheme = PLANS[method]
    for name, p, q in CASES:
        for k in (1, 2, 3):
            if not _fits(scheme, k, p.shape[0]):
                continue
            _, acc = exact(plan, scheme, p, q, k)
            closed = float(acceptance_probability(method, p[None], q[None], k)[0])
            assert abs(closed - acc) < 1e-12, (method, name, k, closed, acc)


def test_k1_every_method_is_speculative():
    for name, p, q in CASES:
        beta = float(torch.minimum(p, q).sum())
        for method, (plan, scheme) in PLANS.items():
            _, acc = exact(plan, scheme, p, q, 1)
            assert abs(acc - beta) < 1e-12, (method, name)
        for method in ("speculative", "rrs", "spectr", "greedy_draft"):
            assert abs(float(acceptance_probability(method, p[None], q[None], 1)[0]) - beta) < 1e-12
        for scheme in ("iid", "without_replacement", "greedy"):
            assert abs(float(optimal_acceptance_rate(p[None], q[None], 1, scheme)[0]) - beta) < 1e-12


@pytest.mark.parametrize("method", sorted(PLANS))
def test_acceptance_at_most_optimum_of_its_scheme(method):
    plan, scheme = PLANS[method]
    for name, p, q in CASES:
        for k in (2, 3):
            if not _fits(scheme, k, p.shape[0]):
                continue
            _, acc = exact(plan, scheme, p, q, k)
            best = float(optimal_acceptance_rate(p[None], q[None], k, scheme)[0])
            assert acc <= best + 1e-12, (method, name, k, acc, best)
            if method == "spectr":
                assert acc >= (1 - 1 / torch.e) * best - 1e-12, (name, k, acc, best)
            if method == "greedy_draft":   # optimal for its own scheme
                assert abs(acc - best) < 1e-12


def test_one_hot_p_always_emits_the_target_token():
    p = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    q = torch.tensor([0.1, 0.4, 0.2, 0.3, 0.0], dtype=torch.float64)
    for method, (plan, scheme) in PLANS.items():
        for k in (1, 2, 3):
            law, acc = exact(plan, scheme, p, q, k)
            assert abs(float(law[2]) - 1) < 1e-12, method


def _collapsing_duplicates(p, q, drafts):
    # broken K-SEQ: a pair of equal drafts is verified as a single draft (k_l not counting duplicates)
    plan, _ = PLANS["spectr"]
    acc2, res2 = plan(p, q, drafts)
    acc1, res1 = plan(p, q, drafts[:, :1])
    dup = (drafts[:, 0] == drafts[:, 1])[:, None]
    acc1 = torch.cat([acc1, torch.zeros_like(acc1)], 1)
    return torch.where(dup, acc1, acc2), torch.where(dup, res1, res2)


def test_duplicate_drafts_are_counted():
    # the real rule counts a repeated draft as two draws; collapsing the repeats breaks exactness
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    q = torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15], dtype=torch.float64)
    law, _ = exact(PLANS["spectr"][0], "iid", p, q, 2)
    assert float((law - p).abs().max()) < 1e-12
    law, _ = exact(_collapsing_duplicates, "iid", p, q, 2)
    assert float((law - p).abs().max()) > 1e-3


def _broken_sorted(p, q, drafts):
    # pitfall (i): siblings drawn without replacement but verified sorted by q
    order = q.gather(1, drafts).argsort(-1, descending=True)
    return plan_rrs_without_replacement(p, q, drafts.gather(1, order))


def _broken_reset(p, q, drafts):
    # pitfall (iii): p_cur reset to p for every sibling instead of carried
    x = drafts.long()
    pd, qd = p.double(), q.double()
    px, qx = pd.gather(1, x), qd.gather(1, x)
    return (px / qx).clamp_max(1), residual(pd, qd)


def test_enumeration_detects_the_pitfalls():
    p = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)
    q = torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15], dtype=torch.float64)
    law, _ = exact(_broken_sorted, "without_replacement", p, q, 3)
    assert float((law - p).abs().max()) > 1e-2
    law, _ = exact(_broken_reset, "iid", p, q, 3)
    assert float((law - p).abs().max()) > 1e-2


def _broken_paths(p, q, k, samples, generator):
    # broken estimator: rejected siblings drawn from q_i itself instead of norm(max(0, q_i - p_i))
    from fastdecode.verification.drafts import categorical

    pc, qc = p.double().repeat(samples, 1), q.double().repeat(samples, 1)
    reject = torch.ones(samples, dtype=torch.float64)
    for _ in range(k):
        qi = qc / qc.sum(-1, keepdim=True)
        reject = reject * (1 - torch.minimum(pc, qi).sum(-1))
        x = categorical(qi, generator, 1)
        pc, qc = residual(pc, qi), qc.scatter(1, x, 0.0)
    return 1 - reject


def test_rrs_without_replacement_estimate_matches_enumeration():
    from fastdecode.verification.rrs import acceptance_rrs_without_replacement

    g = torch.Generator().manual_seed(0)
    plan, scheme = PLANS["rrs_without_replacement"]
    for name, p, q in CASES:
        for k in (1, 2, 3):
            if k > p.shape[0]:
                continue
            _, acc = exact(plan, scheme, p, q, k)
            est = acceptance_rrs_without_replacement(p[None], q[None], k, samples=4000, generator=g)
            # rare rejection paths (probability < 1e-4) may be missed by the sample: 2e-4 slack
            assert abs(float(est.mean[0]) - acc) < 5 * float(est.stderr[0]) + 2e-4, (name, k, acc, est)
            if k == 1:
                assert float(est.stderr[0]) < 1e-12 and abs(float(est.mean[0]) - acc) < 1e-12
    p, q = CASES[0][1], CASES[0][2]
    _, acc = exact(plan, scheme, p, q, 3)
    vals = _broken_paths(p[None], q[None], 3, 4000, g)
    assert abs(float(vals.mean()) - acc) > 5 * float(vals.std()) / 4000 ** 0.5 + 2e-4
