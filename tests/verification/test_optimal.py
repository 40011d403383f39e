"""The OT-optimal verifier (verification/optimal.py).

Three levels: exact (the race kernel, the selection law by enumerating every draft tuple, output = p,
acceptance = alpha* by brute force over all token sets), statistical (10^5+ batched samples, chi-square
against p, with broken variants that must fail), and scale (V = 32000 and 151936, k up to 16).
The NumPy spec oracle tests/optimal_iid_reference.py is checked against the batched implementation.
"""
from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from fastdecode.verification import acceptance_probability, verify
from fastdecode.verification.optimal import (acceptance_optimal, build_race, race_select, race_uniforms,
                                             selection_marginal, speculative_against)


@pytest.fixture(params=[False, True], ids=["compacted", "fixed-width"])
def build_mode(request, monkeypatch):
    """Both builds: the compacted one (host reads; the CPU's) and the fixed-width one without host reads (the
    GPU's), through this module's build_race and the one the public verify path calls."""
    if request.param:
        import sys
        from fastdecode.verification import optimal
        orig = optimal.build_race
        fixed = lambda p, q, k, fixed=None: orig(p, q, k, fixed=True)   # noqa: E731
        monkeypatch.setattr(optimal, "build_race", fixed)
        monkeypatch.setattr(sys.modules[__name__], "build_race", fixed)
    return request.param


@pytest.fixture(scope="module")
def ref():
    import optimal_iid_reference
    return optimal_iid_reference


def _random_case(rng, trial):
    V, k = int(rng.integers(2, 7)), int(rng.integers(1, 5))
    p = rng.dirichlet(np.ones(V) * rng.choice([0.2, 1.0, 3.0]))
    q = rng.dirichlet(np.ones(V) * rng.choice([0.2, 1.0, 3.0]))
    if trial % 3 == 0:
        p[rng.integers(V)] = 0.0
        p /= p.sum()
    if trial % 4 == 0:
        q[rng.integers(V)] = 0.0
        q /= q.sum()
    return p, q, k


def _alpha_brute(p, q, k):
    """1 - max over ALL token sets H of q(H)^k - p(H) (no sorting assumed)."""
    best = 0.0
    for mask in itertools.product((0, 1), repeat=len(p)):
        m = np.array(mask, bool)
        best = max(best, q[m].sum() ** k - p[m].sum())
    return 1.0 - best


def _alpha_sorted(p, q, k):
    """1 - max over prefixes of the tokens sorted by p/q ascending (numpy, O(V log V))."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(q > 0, p / np.where(q > 0, q, 1.0), np.inf)
    o = np.argsort(r, kind="stable")
    d = np.cumsum(q[o]).clip(max=1.0) ** k - np.cumsum(p[o])
    return 1.0 - max(0.0, d.max())


def _dense_kernel(st, row=0):
    """D[j, i] (rank order): probability that a draft of rank j draws its time in interval i."""
    ell, own = st.ell[row].numpy(), st.own[row].numpy()
    xs, xd = st.xs[row].numpy(), st.xd[row].numpy()
    L, R = st.left[row].numpy(), st.right[row].numpy()
    V = len(ell)
    safe = np.where(ell > 0, ell, 1.0)
    D = np.diag(np.where(ell > 0, own / safe, 1.0))
    use = xs + xd > 0
    L, R, xs, xd = L[use], R[use], xs[use], xd[use]
    g = xs + xd
    np.add.at(D, (L, L), xs / safe[L] * xs / g)
    np.add.at(D, (L, R), xs / safe[L] * xd / g)
    np.add.at(D, (R, R), xd / safe[R] * xd / g)
    np.add.at(D, (R, L), xd / safe[R] * xs / g)
    return D, V


def _enumerated_selection(D, ranks_of_token, q, k):
    """Exact law of the selected token: every draft tuple, every interval; within an interval the
    drafts' times are uniform, so each of the drafts landing there is first with equal chance."""
    V = len(q)
    tuples = np.array(list(itertools.product(range(V), repeat=k)))       # [T, k] token ids
    w = np.prod(q[tuples], axis=1)
    Dt = D[ranks_of_token[tuples]]                                        # [T, k, V] interval law per draft
    after = np.flip(np.cumsum(np.flip(Dt, -1), -1), -1) - Dt              # P(interval > i)
    b = np.zeros(V)
    for r in range(k):
        others = [s for s in range(k) if s != r]
        win = np.zeros(Dt.shape[::2])                                     # [T, V]
        for S in itertools.product((0, 1), repeat=k - 1):
            term = Dt[:, r] / (1 + sum(S))
            for s, inside in zip(others, S):
                term = term * (Dt[:, s] if inside else after[:, s])
            win += term
        np.add.at(b, tuples[:, r], w * win.sum(-1))
    return b


# ---------------------------------------------------------------------------- exact
def test_exact_selection_output_and_acceptance(build_mode):
    rng = np.random.default_rng(7)
    for trial in range(40):
        p, q, k = _random_case(rng, trial)
        st = build_race(torch.tensor(p)[None], torch.tensor(q)[None], k)
        D, Vs = _dense_kernel(st)
        ell = st.ell[0].numpy()
        pos = ell > 0
        assert np.allclose(D[pos].sum(1), 1.0, atol=1e-13)                # a draft's time lands somewhere
        assert np.allclose(ell @ D, ell, atol=1e-14)                      # time of a draft ~ U[0, 1]
        ranks = st.rank[0].numpy().clip(max=Vs - 1)
        b_enum = _enumerated_selection(D, ranks, q, k)
        b_real = st.b_real[0].numpy()
        assert np.abs(b_enum - b_real).max() < 1e-13, trial
        acc_y = np.where(b_real > 0, np.minimum(1.0, p / np.where(b_real > 0, b_real, 1.0)), 0.0)
        acc = float((b_enum * acc_y).sum())
        res = np.maximum(p - b_real, 0.0)
        out = b_enum * acc_y + ((1 - acc) * res / res.sum() if res.sum() > 0 else 0.0)
        assert np.abs(out - p).max() < 1e-13, trial
        alpha = _alpha_brute(p, q, k)
        assert abs(acc - alpha) < 1e-13, (trial, acc, alpha)
        assert abs(float(st.alpha[0]) - alpha) < 1e-13
        assert abs(float(acceptance_optimal(torch.tensor(p)[None], torch.tensor(q)[None], k)[0]) - alpha) < 1e-13


def test_matches_spec_oracle_batched(ref, build_mode):
    rng = np.random.default_rng(8)
    cases = [_random_case(rng, t) for t in range(60)]
    for k in (1, 2, 3, 4, 8):                                             # one batch of rows of equal V per k
        for V in (3, 5, 6):
            rows = [(p, q) for p, q, _ in cases if len(p) == V]
            P = torch.tensor(np.array([r[0] for r in rows]))
            Q = torch.tensor(np.array([r[1] for r in rows]))
            st = build_race(P, Q, k)
            for i, (p, q) in enumerate(rows):
                o = ref.build(p, q, k)
                assert np.abs(st.b_real[i].numpy() - o["breal"]).max() < 1e-13
                assert abs(float(st.alpha[i]) - ref.alpha_star(p, q, k)) < 1e-13


def test_k1_is_classic_speculative_sampling():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(5, 40, generator=g, dtype=torch.float64).pow(3)
    q = torch.rand(5, 40, generator=g, dtype=torch.float64).pow(3)
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    assert torch.allclose(selection_marginal(p, q, 1), q, atol=1e-14)
    assert torch.allclose(acceptance_optimal(p, q, 1), torch.minimum(p, q).sum(-1), atol=1e-14)


def test_identical_distributions_accept_always():
    p = torch.tensor([[0.5, 0.25, 0.25, 0.0]], dtype=torch.float64)
    for k in (1, 2, 5):
        assert abs(float(acceptance_optimal(p, p, k)[0]) - 1.0) < 1e-14


# ---------------------------------------------------------------------------- statistical
def _chi2_pvalue(tokens, probs):
    from scipy.stats import chi2

    obs = torch.bincount(tokens, minlength=probs.shape[0]).double().numpy()
    exp = probs.numpy() * tokens.shape[0]
    keep = exp > 0
    assert obs[~keep].sum() == 0, "a zero-probability token was emitted"
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    return float(chi2.sf(stat, keep.sum() - 1))


# a case where the race needs pools at k = 3 and 4, with a zero-probability target token
P_STAT = [0.3, 0.3, 0.15, 0.1, 0.15, 0.0]
Q_STAT = [0.02, 0.08, 0.3, 0.3, 0.2, 0.1]


def _expanded(st, n):
    """The race of one row, viewed as n identical rows (no copy)."""
    out = dataclasses.replace(st, **{f.name: getattr(st, f.name).expand(n, *getattr(st, f.name).shape[1:])
                                     for f in dataclasses.fields(st) if f.name not in ("k", "alpha")})
    return dataclasses.replace(out, cum=out.cum.contiguous())        # searchsorted wants it contiguous


def _run_variant(st, drafts, u, gen, variant):
    if variant == "pools_swapped":            # a draft in a pool goes to the wrong side
        st = dataclasses.replace(st, xs=st.xd, xd=st.xs)
    elif variant == "no_pools":               # earliest rank wins (selection law dW), b_real still assumed
        st = dataclasses.replace(st, own=st.ell, last=torch.full_like(st.last, -1))
    sel = race_select(st, drafts, u)
    y = drafts.gather(1, sel[:, None])[:, 0]
    b = st.b_real
    if variant == "q_as_proposal":            # verifying the selected draft as if it were a plain q-draft
        b = st.p.new_tensor(Q_STAT).expand_as(b)
    return y, speculative_against(st.p, b, y, gen)[0]


@pytest.mark.parametrize("k", [3, 4])
def test_statistical_output_is_p_and_broken_variants_fail(k, build_mode):
    pytest.importorskip("scipy")
    N = 100_000
    gen = torch.Generator().manual_seed(k)
    p = torch.tensor(P_STAT, dtype=torch.float64)
    q = torch.tensor(Q_STAT, dtype=torch.float64)
    st1 = build_race(p[None], q[None], k)
    assert int((st1.xs > 0).sum()) >= 1, "the case must exercise the pools"
    drafts = torch.multinomial(q, N * k, replacement=True, generator=gen).view(N, k)
    # the public path, batched over N rows: registry -> verify_optimal
    res = verify("optimal", p.expand(N, -1), q.expand(N, -1), drafts, gen)
    assert _chi2_pvalue(res.tokens, p) > 1e-4
    alpha = float(acceptance_probability("optimal", p[None], q[None], k)[0])
    rate = res.accepted.double().mean().item()
    assert abs(rate - alpha) < 5 * (alpha * (1 - alpha) / N) ** 0.5, (rate, alpha)
    idx = res.draft_index
    assert ((idx == -1) == ~res.accepted).all() and (idx < k).all()
    assert (drafts.gather(1, idx.clamp_min(0)[:, None])[:, 0] == res.tokens)[res.accepted].all()
    # the selection follows b_real; each broken variant moves the output away from p
    st, N2 = _expanded(st1, 2 * N), 2 * N
    drafts = torch.multinomial(q, N2 * k, replacement=True, generator=gen).view(N2, k)
    y, tokens = _run_variant(st, drafts, race_uniforms(N2, k, gen, "cpu"), gen, "none")
    assert _chi2_pvalue(y, st1.b_real[0]) > 1e-4 and _chi2_pvalue(tokens, p) > 1e-4
    for variant in ("pools_swapped", "no_pools", "q_as_proposal"):
        _, tokens = _run_variant(st, drafts, race_uniforms(N2, k, gen, "cpu"), gen, variant)
        assert _chi2_pvalue(tokens, p) < 1e-8, variant


# ---------------------------------------------------------------------------- scale
def _realistic_pair(V, seed, top_p=None):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, V, generator=g, dtype=torch.float64) * 2.5
    p = logits.softmax(-1)
    q = (logits + torch.randn(1, V, generator=g, dtype=torch.float64)).softmax(-1)
    if top_p is not None:                                  # zero-probability tokens, as with top-p
        for t in (p, q):
            s, i = t.sort(-1, descending=True)
            drop = (s.cumsum(-1) - s) >= top_p
            t.masked_fill_(torch.zeros_like(drop).scatter_(-1, i, drop), 0.0)
            t.div_(t.sum(-1, keepdim=True))
    return p, q


@pytest.mark.parametrize("V", [32000, 151936])
def test_scale_acceptance_equals_alpha_star(V, build_mode):
    try:
        from fastdecode.verification.bound import optimal_acceptance_rate
    except ImportError:
        optimal_acceptance_rate = None
    for k in (2, 4, 8, 16):
        p, q = _realistic_pair(V, seed=k, top_p=0.98 if k in (4, 16) else None)
        st = build_race(p, q, k)
        acc = float(torch.minimum(st.p, st.b_real).sum())
        alpha = _alpha_sorted(p[0].numpy(), q[0].numpy(), k)
        assert abs(acc - alpha) < 1e-9, (V, k, acc, alpha)
        assert abs(float(st.alpha[0]) - alpha) < 1e-9
        assert abs(float(st.b_real.sum()) - 1.0) < 1e-9 and float(st.b_real.min()) >= 0.0
        assert abs(float(st.b.sum()) - 1.0) < 1e-9
        # achievable: for the top-j ranks T, b_real(T) <= 1 - (1 - q(T))^k
        br = st.b_real[0][st.order[0]].cumsum(0)
        qt = q[0][st.order[0]].cumsum(0).clamp_max(1.0)
        assert bool((br <= 1 - (1 - qt) ** k + 1e-9).all())
        if optimal_acceptance_rate is not None:
            ref_alpha = float(torch.as_tensor(optimal_acceptance_rate(p, q, k, scheme="iid")).reshape(-1)[0])
            assert abs(acc - ref_alpha) < 1e-9


# ---------------------------------------------------------------------------- interface
def test_interface_and_validation():
    gen = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(3, 50, generator=gen), -1)         # float32, as from the decoding loop
    q = torch.softmax(torch.randn(3, 50, generator=gen), -1)
    drafts = torch.multinomial(q, 4, replacement=True, generator=gen)
    res = verify("optimal", p, q, drafts, gen)
    assert res.tokens.shape == (3,) and res.tokens.dtype == torch.long
    assert ((res.tokens >= 0) & (res.tokens < 50)).all()
    assert acceptance_probability("optimal", p, q, 4).shape == (3,)
    with pytest.raises(ValueError, match="k must be"):
        build_race(p, q, 0)
    with pytest.raises(ValueError, match="same shape"):
        build_race(p, q[:, :10], 2)


# ---------------------------------------------------------------------------- fast paths (issue 17)
def _check_exact_small(p, q, k, tol=1e-13):
    """Enumerate every draft tuple: the output law is p and the acceptance is alpha* (brute force)."""
    st = build_race(torch.tensor(p)[None], torch.tensor(q)[None], k)
    D, Vs = _dense_kernel(st)
    b_enum = _enumerated_selection(D, st.rank[0].numpy().clip(max=Vs - 1), q, k)
    b_real = st.b_real[0].numpy()
    assert np.abs(b_enum - b_real).max() < tol
    acc_y = np.where(b_real > 0, np.minimum(1.0, p / np.where(b_real > 0, b_real, 1.0)), 0.0)
    acc = float((b_enum * acc_y).sum())
    res = np.maximum(p - b_real, 0.0)
    out = b_enum * acc_y + ((1 - acc) * res / res.sum() if res.sum() > 0 else 0.0)
    assert np.abs(out - p).max() < tol
    assert abs(acc - _alpha_brute(p, q, k)) < tol


def test_ties_exact(build_mode):
    # equal ratios p/q (ties in the rank order), p = q on part of the vocabulary, q = 0 < p and p = 0 < q
    cases = [([0.2, 0.2, 0.1, 0.1, 0.4, 0.0], [0.1, 0.1, 0.05, 0.05, 0.5, 0.2]),
             ([0.25, 0.25, 0.25, 0.25, 0.0], [0.25, 0.25, 0.25, 0.0, 0.25]),
             ([0.3, 0.3, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]),
             ([0.1, 0.2, 0.3, 0.4, 0.0, 0.0], [0.05, 0.1, 0.15, 0.2, 0.25, 0.25])]
    for p, q in cases:
        for k in (1, 2, 3, 4):
            _check_exact_small(np.array(p), np.array(q), k)


def test_disjoint_supports_exact_and_at_scale(build_mode):
    for k in (1, 2, 4):
        _check_exact_small(np.array([0.5, 0.5, 0.0, 0.0, 0.0]), np.array([0.0, 0.0, 0.2, 0.3, 0.5]), k)
    g = torch.Generator().manual_seed(3)
    V = 151936
    p = torch.zeros(1, V, dtype=torch.float64)
    q = torch.zeros(1, V, dtype=torch.float64)
    p[0, :500] = torch.rand(500, generator=g, dtype=torch.float64)
    q[0, 500:1500] = torch.rand(1000, generator=g, dtype=torch.float64)
    p, q = p / p.sum(), q / q.sum()
    st = build_race(p, q, 4)
    assert abs(float(st.alpha[0])) < 1e-12 and float(torch.minimum(st.p, st.b_real).sum()) < 1e-12
    assert abs(float(st.b_real.sum()) - 1.0) < 1e-12 and float(st.b_real[0, :500].sum()) == 0.0


def test_sparse_rows_equal_dense_rows():
    """A row with p = q = 0 outside a support gives the same race, on the support, as the dense row of the
    support alone; batched with other rows (padding) it gives the same values and the same draws."""
    from fastdecode.verification.optimal import build_races, verify_optimal, verify_prepared
    g = torch.Generator().manual_seed(5)
    V, S = 4000, 300
    for k in (2, 4, 8):
        pd = torch.rand(1, S, generator=g, dtype=torch.float64).pow(4)
        qd = torch.rand(1, S, generator=g, dtype=torch.float64).pow(4)
        pd, qd = pd / pd.sum(), qd / qd.sum()
        cols = torch.randperm(V, generator=g)[:S].sort().values
        ps = torch.zeros(1, V, dtype=torch.float64).index_copy_(1, cols, pd)
        qs = torch.zeros(1, V, dtype=torch.float64).index_copy_(1, cols, qd)
        dense, sparse = build_race(pd, qd, k), build_race(ps, qs, k)
        assert sparse.ell.shape[1] == S                                   # only the support was sorted
        # (the renormalising sums add the same numbers in another order: equal to rounding)
        assert (sparse.b_real[:, cols] - dense.b_real).abs().max() < 1e-15
        outside = torch.ones(V, dtype=torch.bool).index_fill_(0, cols, False)
        assert not bool(sparse.b_real[0, outside].any())                  # nothing selected off the support
        assert (sparse.alpha - dense.alpha).abs().max() < 1e-15
        assert torch.equal(sparse.order, cols[dense.order])
        # in a batch: a dense row (full support), the sparse row, and a row with a smaller support
        other = torch.softmax(torch.randn(1, V, generator=g, dtype=torch.float64), -1)
        small_p = torch.zeros(1, V, dtype=torch.float64)
        small_p[0, :7] = 1 / 7
        P = torch.cat([other, ps, small_p])
        Q = torch.cat([other.flip(-1), qs, small_p.roll(3, -1)])
        batch = build_race(P, Q, k)
        assert torch.equal(batch.b_real[1:2], sparse.b_real) and torch.equal(batch.alpha[1:2], sparse.alpha)
        for i in range(3):
            single = build_race(P[i:i + 1], Q[i:i + 1], k)
            assert torch.equal(batch.b_real[i:i + 1], single.b_real)
            drafts = torch.multinomial(Q[i], 64 * k, replacement=True, generator=g).view(64, k)
            r1 = verify_optimal(P[i:i + 1].expand(64, -1), Q[i:i + 1].expand(64, -1), drafts,
                                torch.Generator().manual_seed(i))
            st_b = build_races(P, Q, [k, k, k])[i]
            r2 = verify_prepared(_expanded(st_b, 64), drafts, torch.Generator().manual_seed(i))
            assert torch.equal(r1.tokens, r2.tokens) and torch.equal(r1.accepted, r2.accepted)


def test_fixed_width_build_equals_the_compacted_build():
    """The build without host reads (the GPU's default) gives the compacted build's race on the support: the
    same selection law, alpha* and acceptance, and, from the same generator, the same selected drafts,
    tokens and decisions, for dense and sparse rows, one row or a batch."""
    from fastdecode.verification.optimal import verify_prepared
    g = torch.Generator().manual_seed(11)
    for V, top_p in ((300, None), (300, 0.9), (5000, 0.95)):
        for k in (2, 3, 4, 8):
            rows = [_realistic_pair(V, seed=100 * k + i, top_p=top_p) for i in range(3)]
            P, Q = torch.cat([r[0] for r in rows]), torch.cat([r[1] for r in rows])
            for sl in (slice(0, 1), slice(0, 3)):
                a, b = build_race(P[sl], Q[sl], k, fixed=False), build_race(P[sl], Q[sl], k, fixed=True)
                assert b.ell.shape[1] == V and (top_p is None or a.ell.shape[1] < V)
                assert (a.b_real - b.b_real).abs().max() < 1e-15 and torch.equal(a.alpha, b.alpha)
                for i, s in enumerate(((P[sl] > 0) | (Q[sl] > 0)).sum(-1).tolist()):   # the same ranks on the support
                    assert torch.equal(a.order[i, :s], b.order[i, :s])
                n = sl.stop
                drafts = torch.stack([torch.multinomial(Q[i], 256 * k, replacement=True, generator=g).view(256, k)
                                      for i in range(n)]).view(n * 256, k)
                ra = verify_prepared(_expanded_rows(a, 256), drafts, torch.Generator().manual_seed(k))
                rb = verify_prepared(_expanded_rows(b, 256), drafts, torch.Generator().manual_seed(k))
                assert torch.equal(ra.tokens, rb.tokens) and torch.equal(ra.accepted, rb.accepted)
                assert torch.equal(ra.draft_index, rb.draft_index)


def _expanded_rows(st, n: int):
    """Each row of a race repeated n times (row-major), as one batch."""
    return dataclasses.replace(st, **{f.name: getattr(st, f.name).repeat_interleave(n, 0)
                                      for f in dataclasses.fields(st) if f.name != "k"})


def test_prepared_verify_equals_verify():
    """verify(..., prepared=prepare(...)[i]) over rows with different k decides exactly as verify."""
    from fastdecode.verification import prepare
    g = torch.Generator().manual_seed(9)
    V = 1000
    p = torch.softmax(torch.randn(5, V, generator=g) * 2, -1)
    q = torch.softmax(torch.randn(5, V, generator=g) * 2, -1)
    ks = [4, 1, 2, 4, 3]
    prep = prepare("optimal", p, q, ks)
    assert prepare("rrs", p, q, ks) is None
    for i, k in enumerate(ks):
        drafts = torch.multinomial(q[i], k, replacement=True, generator=g)[None]
        a = verify("optimal", p[i:i + 1], q[i:i + 1], drafts, torch.Generator().manual_seed(i))
        b = verify("optimal", p[i:i + 1], q[i:i + 1], drafts, torch.Generator().manual_seed(i), prepared=prep[i])
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.accepted, b.accepted)
        assert torch.equal(a.draft_index, b.draft_index)
    with pytest.raises(ValueError, match="built for k"):
        verify("optimal", p[:1], q[:1], torch.zeros(1, 2, dtype=torch.long), None, prepared=prep[0])


@pytest.mark.parametrize("V", [20000, 40000])
def test_batched_cpu_sort_paths(V):
    """Several rows whose support lies in the padded-radix range (V = 20000) or above it (V = 40000):
    each row of the batch equals its own build (to 1e-9 relative; bit for bit on one thread), and acceptance = alpha*
    to 1e-9."""
    g = torch.Generator().manual_seed(V)
    logits = torch.randn(3, V, generator=g, dtype=torch.float64) * 2.5
    p = logits.softmax(-1)
    q = (logits + torch.randn(3, V, generator=g, dtype=torch.float64)).softmax(-1)
    p[1, : V // 3] = 0.0                                                 # a row with a smaller support
    q[1, : V // 4] = 0.0
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    for k in (2, 5):
        batch = build_race(p, q, k)
        for i in range(3):
            single = build_race(p[i:i + 1], q[i:i + 1], k)
            # equal up to the order of multi-threaded reductions (bit for bit on one thread)
            torch.testing.assert_close(batch.b_real[i:i + 1], single.b_real, rtol=1e-9, atol=1e-15)
            torch.testing.assert_close(batch.alpha[i:i + 1], single.alpha, rtol=1e-12, atol=1e-15)
            acc = float(torch.minimum(single.p, single.b_real).sum())
            assert abs(acc - _alpha_sorted(p[i].numpy(), q[i].numpy(), k)) < 1e-9


def test_one_draft_is_speculative_sampling_without_a_race():
    """k = 1 skips the race (b = q): output = p by chi-square, acceptance = sum min(p, q), and the
    prepared path (b from the built race's q) decides exactly as the unprepared one."""
    pytest.importorskip("scipy")
    N = 100_000
    gen = torch.Generator().manual_seed(11)
    p = torch.tensor(P_STAT, dtype=torch.float64)
    q = torch.tensor(Q_STAT, dtype=torch.float64)
    drafts = torch.multinomial(q, N, replacement=True, generator=gen)[:, None]
    res = verify("optimal", p.expand(N, -1), q.expand(N, -1), drafts, gen)
    assert _chi2_pvalue(res.tokens, p) > 1e-4
    alpha = float(torch.minimum(p, q).sum())
    assert abs(res.accepted.double().mean().item() - alpha) < 5 * (alpha * (1 - alpha) / N) ** 0.5
    assert ((res.draft_index == 0) == res.accepted).all() and ((res.draft_index == -1) == ~res.accepted).all()
    from fastdecode.verification.optimal import build_race, verify_prepared
    P, Q = p.expand(64, -1).float(), q.expand(64, -1).float()
    a = verify("optimal", P, Q, drafts[:64], torch.Generator().manual_seed(3))
    b = verify_prepared(build_race(P, Q, 1), drafts[:64], torch.Generator().manual_seed(3))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.accepted, b.accepted)


def test_verify_reads_b_real_in_rank_order():
    """verify_prepared reads b_real at the selected draft from rank order and scatters it to token order
    for rejected rows only: it decides exactly as selection + speculative_against with the full
    token-order b_real (dense rows and rows with a small support, many rejections)."""
    from fastdecode.verification.optimal import verify_prepared
    g = torch.Generator().manual_seed(12)
    V, N, k = 300, 400, 3
    p = torch.softmax(torch.randn(N, V, generator=g, dtype=torch.float64) * 3, -1)
    q = torch.softmax(torch.randn(N, V, generator=g, dtype=torch.float64) * 3, -1)
    q[::2, 40:] = 0.0                                                    # half the rows: small support
    p[::2, 60:] = 0.0
    p, q = p / p.sum(-1, keepdim=True), q / q.sum(-1, keepdim=True)
    st = build_race(p, q, k)
    drafts = torch.multinomial(q, k, replacement=True, generator=g)
    res = verify_prepared(st, drafts, torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)
    sel = race_select(st, drafts, race_uniforms(N, k, gen, "cpu"))
    y = drafts.gather(1, sel[:, None])[:, 0]
    tokens, accepted = speculative_against(st.p, st.b_real, y, gen)
    assert 0.1 < float((~accepted).double().mean()) < 0.9
    assert torch.equal(res.tokens, tokens) and torch.equal(res.accepted, accepted)


def test_residual_by_inverse_cdf():
    """The CPU residual draw (inverse CDF): law norm(max(0, p - b)) by chi-square, never a token of
    zero residual mass, and p itself where the residual is empty (p == b)."""
    pytest.importorskip("scipy")
    from fastdecode.verification.optimal import _sample_residual
    N = 100_000
    gen = torch.Generator().manual_seed(13)
    p = torch.tensor(P_STAT, dtype=torch.float64)
    b = torch.tensor(Q_STAT, dtype=torch.float64)
    r = (p - b).clamp_min(0)
    tokens = _sample_residual(p.expand(N, -1), b.expand(N, -1), gen)
    assert _chi2_pvalue(tokens, r / r.sum()) > 1e-4                      # also: no zero-mass token emitted
    tokens = _sample_residual(p.expand(N, -1), p.expand(N, -1), gen)
    assert _chi2_pvalue(tokens, p) > 1e-4


def test_fixed_width_build_reads_nothing_back():
    """The fixed-width build and the whole verification after it make no host read (the GPU's path: nothing
    waits for the device, so it could be recorded as a graph): they run on the meta device, whose tensors hold
    no data and raise at any read; the compacted build reads its compactions' lengths and raises there."""
    from fastdecode.verification.optimal import verify_prepared
    p = torch.empty(2, 1000, dtype=torch.float64, device="meta")
    st = build_race(p, torch.empty_like(p), 4, fixed=True)
    assert st.ell.shape == (2, 1000) and st.cum.shape == (2, 4002)
    res = verify_prepared(st, torch.empty(2, 4, dtype=torch.long, device="meta"))
    assert res.tokens.shape == (2,)
    with pytest.raises(RuntimeError, match="meta"):
        build_race(p, torch.empty_like(p), 4, fixed=False)


def test_recorded_build_replays_the_fixed_width_build(monkeypatch):
    """build_race(record=True) (CUDA): one recording per (rows, V, k, dtype), replayed for new p and q. Here a
    stand-in for the CUDA graph recomputes the recorded function into the recorded outputs on each replay, as
    a graph rewrites its own: every replay gives the fixed-width build of its own p and q, value for value,
    and a state kept from an earlier call is not rewritten by a later one (the result is a copy)."""
    from fake_graphs import FakeGraph
    from fastdecode import graphs
    from fastdecode.verification import optimal
    recordings = []

    def fake_record(fn, device):
        out = fn()
        recordings.append(device)
        return FakeGraph(fn, (), out, host_reads=True), out   # (its CPU path reads once; CUDA's: see the meta test)
    monkeypatch.setattr(graphs, "record", fake_record)
    monkeypatch.setattr(optimal, "_RECORDED", {})
    pairs = [_realistic_pair(2000, seed=s, top_p=0.95 if s % 2 else None) for s in range(3)]
    kept = []
    for k in (4, 4, 2):
        for p, q in pairs:
            st, ref = optimal.build_race(p, q, k, record=True), optimal.build_race(p, q, k, fixed=True)
            for f in dataclasses.fields(st):
                a, b = getattr(st, f.name), getattr(ref, f.name)
                assert (a == b) if f.name == "k" else torch.equal(a, b), f.name
            kept.append((st, ref))
    assert len(recordings) == 2                                           # k = 4 and k = 2, each once
    st, ref = kept[0]
    assert torch.equal(st.b_real_rank, ref.b_real_rank) and torch.equal(st.cum, ref.cum)
    with pytest.raises(ValueError, match="same shape"):
        optimal.build_race(pairs[0][0], pairs[0][1][:, :10], 2, record=True)
