"""Reference (NumPy, small and slow on purpose) for the OT-optimal verifier of k i.i.d. drafts.

Spec oracle for tests (a copy kept in the repository so that tests/verification/test_optimal.py never skips):
`build(p, q, k)` returns the selection law; `verify_step` runs one verification; `exact_output(p, q, k)`
enumerates every draft tuple and integrates the race exactly, returning the output distribution and the
acceptance probability (use V <= 6, k <= 4). Written independently of fastdecode.verification.optimal.
Run this file to see its own checks pass: `python tests/optimal_iid_reference.py`.
"""
import itertools
import numpy as np


def ratio_order(p, q):
    """Token ids sorted by p/q descending (q == 0 < p first, p == q == 0 last), stable."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(q > 0, p / np.where(q > 0, q, 1), np.where(p > 0, np.inf, -1.0))
    return np.argsort(-r, kind="stable")


def alpha_star(p, q, k):
    """Optimal acceptance rate for k i.i.d. drafts: 1 - max over prefixes H of ascending p/q of q(H)^k - p(H)."""
    o = ratio_order(p, q)
    Q = np.concatenate([[0.0], np.cumsum(q[o])])
    P = np.concatenate([[0.0], np.cumsum(p[o])])
    d = P - (1.0 - (1.0 - np.minimum(Q, 1.0)) ** k)
    return 1.0 - max(0.0, d.max())


def build(p, q, k):
    """Selection law of the race: per token (in ratio order) an own time interval [Q_j, Q_j + l_j),
    the probability lam_j of drawing its time there, and exchange pools with partner tokens.
    Returns the optimal selection marginal b (breal, recomputed from the kernel) and alpha = alpha*."""
    V = len(p)
    o = ratio_order(p, q)
    ps, qs = p[o], q[o]
    R = np.concatenate([np.cumsum(qs[::-1])[::-1], [0.0]])   # suffix masses, accurate near the end
    R = np.minimum(R / R[0], 1.0)
    Q = 1.0 - R
    W = 1.0 - R ** k                                           # P(some draft among the first j tokens)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(R[:-1] > 0, qs / np.where(R[:-1] > 0, R[:-1], 1), 0.0)
        dW = np.where(qs > 0, R[:-1] ** k * -np.expm1(k * np.log1p(-np.minimum(frac, 1.0))), 0.0)
    P = np.concatenate([[0.0], np.cumsum(ps)])
    d = P - W
    d[0] = 0.0
    Dr = np.maximum.accumulate(np.maximum(d, 0.0))
    js_ = int(np.argmax(d))
    Dstar = max(d[js_], 0.0)
    b = ps.copy()                                              # optimal marginal, before the cut
    touch = np.zeros(V + 1, bool)
    touch[0] = True
    b[:js_] = ps[:js_] - np.diff(Dr[: js_ + 1])
    touch[1: js_ + 1] = Dr[1: js_ + 1] == d[1: js_ + 1]
    G = W[js_:] - P[js_:] + Dstar                              # after the cut
    G[0] = 0.0
    E = np.minimum.accumulate(G[::-1])[::-1]
    E[-1] = G[-1]
    b[js_:] = ps[js_:] + np.diff(E)
    touch[js_:] = E == G
    touch[-1] = True
    b = np.maximum(b, 0.0)
    wtype = touch[:-1] & touch[1:] & (qs > 0)                  # tokens that keep their own interval
    b[wtype] = dW[wtype]
    pos = qs > 0
    b[~pos] = 0.0
    diff = np.where(pos & ~wtype, dW - b, 0.0)
    surplus, deficit = np.maximum(diff, 0.0), np.maximum(-diff, 0.0)
    Sc = np.concatenate([[0.0], np.cumsum(surplus)])
    Dc = np.concatenate([[0.0], np.cumsum(deficit)])
    tot = min(Sc[-1], Dc[-1])
    cuts = np.unique(np.concatenate([Sc[Sc <= tot], Dc[Dc <= tot], [tot]]))   # FIFO merge of the two
    lo, hi = cuts[:-1], cuts[1:]
    dL = hi - lo
    keep = dL > 0
    lo, hi, dL = lo[keep], hi[keep], dL[keep]
    mid = 0.5 * (lo + hi)
    jsu = np.searchsorted(Sc, mid, side="right") - 1
    jde = np.searchsorted(Dc, mid, side="right") - 1
    ok = (surplus[jsu] > 0) & (deficit[jde] > 0) & (jsu < jde)
    jsu, jde, dL = jsu[ok], jde[ok], dL[ok]
    ell = qs
    with np.errstate(divide="ignore", invalid="ignore"):
        m = np.where(pos, dW / np.where(pos, ell, 1), 0.0)
        beta = np.where(pos, b / np.where(pos, ell, 1), 0.0)
    xs = dL * ell[jsu] / surplus[jsu]                          # time the surplus token spends in the pool
    xd = dL / np.maximum(beta[jsu] - m[jde], 1e-300)           # time the deficit token spends in it
    used = np.bincount(jsu, xs, V) + np.bincount(jde, xd, V)
    scale = np.where(used > ell, ell / np.where(used > 0, used, 1), 1.0)   # rounding guard
    xs, xd = xs * scale[jsu], xd * scale[jde]
    used = np.bincount(jsu, xs, V) + np.bincount(jde, xd, V)
    lam = np.where(pos, np.clip(1.0 - used / np.where(pos, ell, 1), 0.0, 1.0), 1.0)
    g = xs + xd
    cm = xs * m[jsu] + xd * m[jde]
    breal_s = lam * ell * m + np.bincount(jsu, (xs / g) * cm, V) + np.bincount(jde, (xd / g) * cm, V)
    breal = np.empty(V)
    breal[o] = breal_s
    rank = np.empty(V, int)
    rank[o] = np.arange(V)
    return dict(breal=breal, o=o, rank=rank, Q=Q, ell=ell, lam=lam, js=jsu, jd=jde, xs=xs, xd=xd,
                alpha=1 - Dstar)


def kernel(st):
    """Dense matrix D[j, i] (ratio order): probability that a draft of token j draws its time in the
    interval of token i. Small V only; rows sum to 1 and sum_j l_j D[j, i] = l_i."""
    ell, lam = st["ell"], st["lam"]
    D = np.diag(lam.copy())
    for j, jd, xs, xd in zip(st["js"], st["jd"], st["xs"], st["xd"]):
        g = xs + xd
        D[j, j] += xs / ell[j] * xs / g
        D[j, jd] += xs / ell[j] * xd / g
        D[jd, jd] += xd / ell[jd] * xd / g
        D[jd, j] += xd / ell[jd] * xs / g
    return D


def verify_step(st, p, drafts, rng):
    """One verification of i.i.d. drafts (token ids). Returns (token, accepted)."""
    D = kernel(st)
    times = []
    for y in drafts:
        j = st["rank"][y]
        i = rng.choice(len(D), p=D[j] / D[j].sum())           # which interval the time falls in
        times.append(st["Q"][i] + rng.random() * st["ell"][i])
    y = drafts[int(np.argmin(times))]                           # the earliest time wins
    b = st["breal"]
    if rng.random() < min(1.0, p[y] / b[y]):
        return y, True
    res = np.maximum(p - b, 0)
    return int(rng.choice(len(p), p=res / res.sum())), False


def _selection_probs(D, Q, ell, tup):
    """Exact probability that each draft of the tuple (ratio-order ranks) has the earliest time."""
    k = len(tup)
    out, F = np.zeros(k), np.zeros(k)
    for i in range(len(ell)):
        if ell[i] <= 0:
            continue
        t0, t1 = Q[i], Q[i + 1]
        dens = np.array([D[j, i] / ell[i] for j in tup])
        for r in range(k):
            if dens[r] == 0:
                continue
            poly = np.poly1d([dens[r]])
            for s in range(k):
                if s != r:
                    poly = poly * np.poly1d([-dens[s], 1 - F[s] + dens[s] * t0])
            ip = poly.integ()
            out[r] += ip(t1) - ip(t0)
        F += dens * (t1 - t0)
    return out


def exact_output(p, q, k):
    """Exact output distribution and acceptance probability of the verifier (enumeration)."""
    st = build(p, q, k)
    D, V, b = kernel(st), len(p), st["breal"]
    ap = np.where(b > 0, np.minimum(1, p / np.where(b > 0, b, 1)), 0)
    out, acc = np.zeros(V), 0.0
    for tup in itertools.product(range(V), repeat=k):
        w = np.prod(q[list(tup)])
        if w == 0:
            continue
        pr = _selection_probs(D, st["Q"], st["ell"], [st["rank"][y] for y in tup])
        for r, y in enumerate(tup):
            out[y] += w * pr[r] * ap[y]
            acc += w * pr[r] * ap[y]
    res = np.maximum(p - b, 0)
    if res.sum() > 0:
        out += (1 - acc) * res / res.sum()
    return out, acc


if __name__ == "__main__":
    rng = np.random.default_rng(11)
    worst_out = worst_acc = 0.0
    for trial in range(60):
        V, k = int(rng.integers(2, 6)), int(rng.integers(2, 4))
        p = rng.dirichlet(np.ones(V) * rng.choice([0.2, 1, 3]))
        q = rng.dirichlet(np.ones(V) * rng.choice([0.2, 1, 3]))
        if trial % 5 == 0:
            p[rng.integers(V)] = 0; p /= p.sum()
        out, acc = exact_output(p, q, k)
        worst_out = max(worst_out, np.abs(out - p).max())
        worst_acc = max(worst_acc, abs(acc - alpha_star(p, q, k)))
    print(f"60 cases: max |output - p| = {worst_out:.1e}, max |acceptance - alpha*| = {worst_acc:.1e}")
