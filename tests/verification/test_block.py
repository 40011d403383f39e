"""Block verification (verification/block.py): exact joint law by enumeration on tiny context-dependent
models, expected accepted length vs token-by-token, a statistical test of the sampler with broken
variants that must fail, and the single-chain interface used by the decoding loop."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from fastdecode.verification.block import (block_next_weights, block_kept_length, block_weights, verify_block,
                                           verify_block_batched)
from fastdecode.verification.primitives import sample, uniform


class TinyModel:
    """p(.|prefix) for every prefix, drawn from a Dirichlet seeded by (seed, prefix); some zeros."""

    def __init__(self, V: int, seed: int, conc: float, zero_rate: float):
        self.V, self.seed, self.conc, self.zero_rate = V, seed, conc, zero_rate
        self.cache: dict[tuple, np.ndarray] = {}

    def __call__(self, prefix: tuple) -> np.ndarray:
        if prefix not in self.cache:
            rng = np.random.default_rng([self.seed, len(prefix), *prefix])
            d = rng.dirichlet(np.full(self.V, self.conc))
            if rng.random() < self.zero_rate:
                d[rng.integers(self.V)] = 0.0
                d = d / d.sum()
            self.cache[prefix] = d
        return self.cache[prefix]


def _stack(model, prefixes):
    return torch.tensor(np.array([[model(pre[:i]) for i in range(len(pre) + 1)] for pre in prefixes]))


def _target_law(P, V, n):
    return {s: math.prod(P(s[:i])[s[i]] for i in range(n)) for s in itertools.product(range(V), repeat=n)}


def _block_exact(P, Q, V, g):
    """Exact law of the first g + 1 tokens (block step, then target completion) and E[kept]."""
    X = list(itertools.product(range(V), repeat=g))
    wq = np.array([math.prod(Q(x[:i])[x[i]] for i in range(g)) for x in X])
    p = _stack(P, X)                                  # [T, g+1, V]
    q = _stack(Q, X)[:, :g]                           # [T, g, V]
    drafts = torch.tensor(X, dtype=torch.long).view(len(X), g)
    w, h = block_weights(p, q, drafts)
    # independent scalar recomputation of w and h from the spec
    for t, x in enumerate(X):
        if wq[t] == 0:
            continue
        wi = 1.0
        for i in range(g):
            wi = min(1.0, wi * P(x[:i])[x[i]] / Q(x[:i])[x[i]])
            assert abs(float(w[t, i + 1]) - wi) < 1e-12
            if i < g - 1:
                S = np.maximum(0.0, wi * P(x[: i + 1]) - Q(x[: i + 1])).sum()
                hi = 1.0 if S + 1 - wi == 0 else S / (S + 1 - wi)
            else:
                hi = wi
            assert abs(float(h[t, i]) - hi) < 1e-12
    h = h.numpy()
    law, e_kept = {}, 0.0
    for kept in range(g + 1):
        nw = block_next_weights(p, q, w, torch.full((len(X),), kept, dtype=torch.long)).numpy()
        nw = nw / nw.sum(-1, keepdims=True)
        # P(kept) = h_tau * prod_{l > kept} (1 - h_l), with h_0 = 1
        pt = (h[:, kept - 1] if kept else 1.0) * np.prod(1.0 - h[:, kept:], axis=1)
        e_kept += kept * float((wq * pt).sum())
        for t, x in enumerate(X):
            if wq[t] * pt[t] == 0:
                continue
            for y in range(V):
                head = x[:kept] + (y,)
                for tail in itertools.product(range(V), repeat=g - kept):
                    s = head + tail
                    pr = wq[t] * pt[t] * nw[t, y] * math.prod(P(s[:i])[s[i]] for i in range(kept + 1, g + 1))
                    law[s] = law.get(s, 0.0) + pr
    return law, e_kept


def _token_expected(P, Q, V, g):
    """E[accepted] of token-by-token verification: sum over drafts of sum_t prod_{i<=t} min(1, p/q)."""
    e = 0.0
    for x in itertools.product(range(V), repeat=g):
        wq = math.prod(Q(x[:i])[x[i]] for i in range(g))
        if wq == 0:
            continue
        acc = 1.0
        for i in range(g):
            acc *= min(1.0, P(x[:i])[x[i]] / Q(x[:i])[x[i]])
            e += wq * acc
    return e


CASES = [(V, g, seed) for V, g in ((2, 1), (2, 3), (3, 1), (3, 2), (3, 3)) for seed in range(3)]


@pytest.mark.parametrize("V,g,seed", CASES)
def test_exact_joint_law_and_gain(V, g, seed):
    conc = (0.3, 1.0, 3.0)[seed]
    P = TinyModel(V, 100 + seed, conc, zero_rate=0.3)
    Q = TinyModel(V, 200 + seed, conc, zero_rate=0.3)
    law, e_block = _block_exact(P, Q, V, g)
    target = _target_law(P, V, g + 1)
    err = max(abs(law.get(s, 0.0) - t) for s, t in target.items())
    assert err < 1e-12, err
    assert abs(sum(law.values()) - 1) < 1e-12
    e_token = _token_expected(P, Q, V, g)
    assert e_block >= e_token - 1e-12, (e_block, e_token)


def test_block_strictly_better_somewhere():
    gains = []
    for seed in range(4):
        P, Q = TinyModel(3, 300 + seed, 1.0, 0.0), TinyModel(3, 400 + seed, 1.0, 0.0)
        gains.append(_block_exact(P, Q, 3, 3)[1] - _token_expected(P, Q, 3, 3))
    assert min(gains) >= -1e-12 and max(gains) > 1e-3, gains


# ---------------------------------------------------------------------------- statistical
def _tables(model, V, g):
    """p(.|prefix) for every prefix of length <= g, indexed by (length, base-V code)."""
    return [torch.tensor(np.array([model(s) for s in itertools.product(range(V), repeat=n)])) for n in range(g + 1)]


def _code(tokens, V):
    c = torch.zeros(tokens.shape[0], dtype=torch.long)
    for i in range(tokens.shape[1]):
        c = c * V + tokens[:, i]
    return c


def _simulate(P, Q, V, g, N, gen, variant="block"):
    """N independent chains: draw g drafts from Q, verify, complete to g + 1 tokens with P.
    Returns the base-V code of the first g + 1 tokens of every chain."""
    Pt, Qt = _tables(P, V, g), _tables(Q, V, g)
    drafts = torch.zeros(N, g, dtype=torch.long)
    q = torch.zeros(N, g, V, dtype=torch.float64)
    p = torch.zeros(N, g + 1, V, dtype=torch.float64)
    for i in range(g + 1):
        code = _code(drafts[:, :i], V)
        p[:, i] = Pt[i][code]
        if i < g:
            q[:, i] = Qt[i][code]
            drafts[:, i] = sample(q[:, i], gen)
    if variant == "block":
        kept, nxt = verify_block_batched(p, q, drafts, gen)
    else:
        w, h = block_weights(p, q, drafts)
        eta = uniform(N * g, gen, p.device).view(N, g)
        if variant == "first_failure":          # keep the passes before the first failure
            kept = (eta <= h).long().cumprod(1).sum(1)
        else:
            kept = block_kept_length(h, eta)
        if variant == "plain_residual":         # residual max(0, p - q), ignoring w_kept
            w = torch.ones_like(w)
        nxt = sample(block_next_weights(p, q, w, kept), gen)
    out = torch.zeros(N, g + 1, dtype=torch.long)
    out[:, :g] = drafts
    rows = torch.arange(N)
    out[rows, kept] = nxt
    for i in range(1, g + 1):                   # complete with the target where the step stopped early
        redo = kept < i
        if redo.any():
            pi = Pt[i][_code(out[:, :i], V)]
            out[:, i] = torch.where(redo, sample(pi, gen), out[:, i])
    return _code(out, V)


def _chi2_pvalue(codes, probs):
    from scipy.stats import chi2

    n = codes.shape[0]
    obs = torch.bincount(codes, minlength=len(probs)).double().numpy()
    exp = np.asarray(probs) * n
    keep = exp > 0
    assert obs[~keep].sum() == 0, "a zero-probability sequence was emitted"
    stat = ((obs[keep] - exp[keep]) ** 2 / exp[keep]).sum()
    return float(chi2.sf(stat, keep.sum() - 1))


def test_statistical_law_and_broken_variants_fail():
    pytest.importorskip("scipy")
    V, g, N = 3, 2, 100_000
    # sharp, mismatched pair: both broken variants move the law by far more than the test's resolution
    P, Q = TinyModel(V, 21, 0.3, 0.0), TinyModel(V, 22, 0.3, 0.0)
    target = _target_law(P, V, g + 1)
    probs = [target[s] for s in itertools.product(range(V), repeat=g + 1)]
    gen = torch.Generator().manual_seed(0)
    assert _chi2_pvalue(_simulate(P, Q, V, g, N, gen), probs) > 1e-4
    for variant in ("first_failure", "plain_residual"):
        assert _chi2_pvalue(_simulate(P, Q, V, g, N, gen, variant), probs) < 1e-8, variant


# ---------------------------------------------------------------------------- interface
def test_single_chain_interface_and_greedy():
    V, g = 7, 4
    gen = torch.Generator().manual_seed(3)
    target_ids = torch.tensor([1, 2, 3, 4, 5])
    p = torch.nn.functional.one_hot(target_ids, V).float()
    for n_match in range(g + 1):
        drafts = target_ids[:g].clone()
        if n_match < g:
            drafts[n_match] = 0
        q = torch.nn.functional.one_hot(drafts, V).float()
        n, nxt = verify_block(p, q, drafts, gen)
        assert isinstance(n, int) and isinstance(nxt, int)
        assert n == n_match and nxt == int(target_ids[n_match])


def test_rejects_bad_shapes():
    p, q = torch.full((3, 4), 0.25), torch.full((2, 4), 0.25)
    with pytest.raises(ValueError, match="drafts"):
        verify_block(p, q, torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="shapes disagree"):
        verify_block(p, q, torch.zeros(3, dtype=torch.long))
