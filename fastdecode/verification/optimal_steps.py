"""The building blocks of the optimal verifier's race (:mod:`fastdecode.verification.optimal`): the rank
order (one sort of the support per row, a radix sort on the CPU), the optimal selection marginal b, the
first-in-first-out merge of surplus and deficit masses, and the exact power quotients they need. All batched
over rows, float64 where exactness needs it; docs/verifiers.md section 1 gives the maths.
"""
from __future__ import annotations

import torch

from .workspace import FRESH, MIN_BYTES, Workspace

_ARANGE: dict = {}
_REVERSED: dict = {}


def _arange(n: int, device) -> torch.Tensor:
    """torch.arange(n) (int64) sliced from a cached, growing tensor: allocating and filling a fresh
    arange of ~V elements costs about as much as a scan, and the build needs several per call."""
    key = torch.device(device)
    a = _ARANGE.get(key)
    if a is None or a.shape[0] < n:
        a = torch.arange(max(n, 1 << 12), device=key)
        _ARANGE[key] = a
    return a[:n]


def _flip(x: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """x.flip(-1), written into out when given (same shape). flip has no out=: on the CPU from
    workspace.MIN_BYTES on, a gather by a cached reversed arange (flip's kernel is ~2x faster, but its
    fresh result costs page faults again); elsewhere flip, copied into out."""
    if out is None:
        return x.flip(-1)
    if x.device.type != "cpu" or x.numel() * x.element_size() < MIN_BYTES:
        return out.copy_(x.flip(-1))
    n = x.shape[-1]
    key = x.device
    r = _REVERSED.get(key)
    if r is None or r.shape[0] < n:
        r = _arange(max(n, 1 << 12), key).flip(0)
        _REVERSED[key] = r
    return torch.gather(x, -1, r[r.shape[0] - n:].expand(x.shape), out=out)


def _powers(x: torch.Tensor, k: int, ws: Workspace = FRESH) -> dict:
    """{m: x ** m} for the m that x ** k by repeated squaring and :func:`_pow_quotient` read (a few
    multiplications; torch.pow takes a slow generic path for float64 on the CPU). Relative error of
    x ** m <= 2 log2(m) ulps, as pow's few ulps. The powers are taken from ``ws``."""
    out = {1: x}

    def get(m):
        if m not in out:
            h = get(m // 2)
            out[m] = torch.mul(h, h, out=ws.out(x.shape, x.dtype, x.device))
            if m % 2:
                out[m].mul_(x)
        return out[m]

    get(k)
    m = k
    while m > 1:                       # the powers the quotient recursion reads
        get(m // 2)
        if m % 2:
            get(m - 1)
        m //= 2
    del get     # (get refers to itself: a cycle that would keep the powers alive until a garbage collection)
    return out


def _pow_quotient(pw: dict, k: int, ws: Workspace = FRESH) -> torch.Tensor:
    """(a^k - b^k) / (a - b) = sum_i a^i b^(k-1-i) for a = x[:, :-1] >= b = x[:, 1:] >= 0 (pw: powers
    of x from :func:`_powers`), without the cancellation of the difference: k = 2m gives
    S_m (a^m + b^m), k = 2m + 1 gives a S_2m + b^2m. Every step adds or multiplies nonnegative numbers,
    so the relative error is a few ulps per halving of k (an expm1 / log1p formula costs ~4x more).
    The result (the innermost level's, scaled in place by the outer ones) and the sums: from ``ws``."""
    x = pw[1]
    shape = (x.shape[0], x.shape[1] - 1)
    if k == 1:
        return ws.full(shape, 1.0, x.dtype, x.device)
    h = pw[k // 2] if k % 2 == 0 else None
    if k == 2:
        return torch.add(h[:, :-1], h[:, 1:], out=ws.out(shape, x.dtype, x.device))
    if h is not None:
        return _pow_quotient(pw, k // 2, ws).mul_(
            torch.add(h[:, :-1], h[:, 1:], out=ws.out(shape, x.dtype, x.device)))
    return _pow_quotient(pw, k - 1, ws).mul_(pw[1][:, :-1]).add_(pw[k - 1][:, 1:])


def _normalise(t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """t / t.sum(-1) in float64 (into ``out`` when given: a float64 buffer of t's shape, t detached)."""
    if out is not None:
        out.copy_(t)
        return out.div_(out.sum(-1, keepdim=True))
    t64 = t.double()
    if t64 is t or t64.requires_grad:
        return t64 / t64.sum(-1, keepdim=True)
    return t64.div_(t64.sum(-1, keepdim=True))                             # a fresh copy: divide in place


def _sort_key(p: torch.Tensor, q: torch.Tensor, ws: Workspace = FRESH) -> torch.Tensor:
    """int64 key whose ascending stable order is p/q descending (q = 0 < p first, p = q = 0 last).

    The ratio r = p/q is >= 0 (inf where q = 0 < p) or set to -1.0 where p = q = 0. The bit pattern of a
    nonnegative double read as int64 is increasing in its value (IEEE 754), so -bits sorts r descending;
    -1.0 has the sign bit set, its negated bits are positive and sort after every r >= 0. Sorting int64
    keys is the same order as sorting -r as doubles (a stable sort keeps ties in token order) and cheaper
    than a float64 stable sort on the CPU."""
    r = torch.div(p, q, out=ws.out(p.shape, p.dtype, p.device)).nan_to_num_(nan=-1.0, posinf=float("inf"))
    return r.view(torch.int64).neg_()


_RADIX_MIN = 32768      # at::internal::GRAIN_SIZE: torch's CPU sort of a 1-D integer tensor at least this long
_RADIX_PAD_FROM = 12288  # is a (stable) radix sort (FBGEMM builds); rows from this length are padded up to it
_KEY_PAD = torch.iinfo(torch.int64).max   # above every sort key (the largest, p = q = 0, is 0x4010... )


def _argsort_keys(key: torch.Tensor, ws: Workspace = FRESH) -> torch.Tensor:
    """Stable ascending argsort of each row of int64 keys [N, L].

    On the CPU each row is sorted as a 1-D tensor: torch sorts a 1-D integer tensor of >= 32768
    elements with a radix sort (stable, linear time) and an [N, L] tensor with a comparison sort,
    measured 3.4 vs 9.2 ms at L = 151936 on one thread. Rows of 12288..32767 keys are padded with
    keys above every real key (they sort last, the real keys keep their stable order): 0.5 vs 1.7 ms at
    L = 32000. The result is the same permutation (a stable sort is unique); torch builds without the
    radix sort just take the comparison sort. The result and the sorted keys: from ``ws``."""
    N, L = key.shape
    if key.device.type != "cpu" or L < _RADIX_PAD_FROM or N == 0:
        return torch.argsort(key, dim=-1, stable=True)
    out = ws.empty((N, L), torch.long, key.device)
    if N == 1 and L >= _RADIX_MIN:      # (sort's out= keeps its radix path)
        torch.sort(key[0], stable=True, out=(ws.empty((L,), key.dtype, key.device), out[0]))
        return out
    buf = key.new_full((max(L, _RADIX_MIN),), _KEY_PAD) if L < _RADIX_MIN else None
    for i in range(N):
        if buf is None:
            out[i] = torch.argsort(key[i], stable=True)
        else:
            buf[:L] = key[i]
            out[i] = torch.argsort(buf, stable=True)[:L]
    return out


def _compact(mask: torch.Tensor, fill: int, ws: Workspace = FRESH) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row-wise compaction of a [N, L] bool mask: (idx [N, C], valid [N, C]), idx[n, c] the column of the
    c-th True of row n (columns ascending), ``fill`` past the row's count (C = the largest count, >= 1).
    valid is None when every entry is valid (one row with a True). One row: idx from ``ws``."""
    N = mask.shape[0]
    if N == 1:   # (nonzero resizes its out within the buffer's room)
        c = torch.nonzero(mask[0], out=ws.empty((mask.shape[1], 1), torch.long, mask.device)[:0])[:, 0]
        if c.shape[0]:
            return c[None], None
    counts = mask.sum(-1)
    C = max(1, int(counts.max())) if N else 1
    r, c = mask.nonzero(as_tuple=True)
    pos = _arange(r.shape[0], mask.device) - (counts.cumsum(0) - counts)[r]
    idx = torch.full((N, C), fill, dtype=torch.long, device=mask.device)
    idx[r, pos] = c
    valid = torch.zeros(N, C, dtype=torch.bool, device=mask.device)
    valid[r, pos] = True
    return idx, valid


def _compact_fixed(mask: torch.Tensor, fill: int, ws: Workspace = FRESH) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_compact` without a host read: the same (idx, valid) at the mask's full width L instead of the
    largest count (the Trues of each row first, in column order, then ``fill``), so that nothing waits for
    the device (a GPU build; the extra columns are padding the build already handles: zero masses)."""
    N, L = mask.shape
    dev = mask.device
    pos = torch.cumsum(mask, -1, out=ws.out((N, L), torch.long, dev))      # 1 + place among the row's Trues
    count = pos[:, -1:].clone() if L else pos.new_zeros(N, 1)
    # the Falses write into scratch columns past L (spread on GPUs: writes to one address serialise)
    n_scratch = 1 if dev.type == "cpu" else min(_SCRATCH, max(L, 1))
    cols = _arange(L, dev)
    dest = torch.where(mask, pos.sub_(1), L + cols % n_scratch)
    idx = ws.full((N, L + n_scratch), fill, torch.long, dev).scatter_(1, dest, cols.expand(N, L))[:, :L]
    return idx, torch.lt(cols, count, out=ws.out((N, L), torch.bool, dev))


def _monotone(x: torch.Tensor) -> torch.Tensor:
    # a parallel (GPU) scan of nonnegative numbers need not be monotone in floating point; the CPU scan
    # adds in order, and a rounded sum of nonnegative terms added in order never decreases
    return x if x.device.type == "cpu" else x.cummax(-1).values


def _optimal_b(ps, qs, k: int, ws: Workspace = FRESH):
    """Step 1-2 in rank order. Returns (b, dW, Dstar) with b [N, V], dW [N, V], Dstar [N].

    No masks at the cut: with d_0 = 0 the running max Dr of d is >= 0 and constant (= D*) from the cut
    js (the first argmax of d) on, and G = D* - d is >= 0 everywhere, 0 at js (fl(D* - d_js) = 0) and
    > 0 before it (a nonzero difference of floats never rounds to 0), so its running min E from the
    right is 0 up to js. Hence p - (growth of Dr) + (growth of E) is p minus the growth of Dr before
    the cut and p plus the growth of E after it (the other term is an exact 0), and a boundary touches
    W where E == G (at or after the cut) or Dr == d (before it; Dr == d after it implies E == G)."""
    N, V = ps.shape
    f64, dev = ps.dtype, ps.device
    # (every V-sized step writes into a tensor from ws, in place where a value is not read again: a
    # fresh V-sized tensor costs its page faults on every call)
    c = ws.empty((N, V + 1), f64, dev)
    c[:, :1] = 0.0
    _flip(qs, c[:, 1:])
    raw = _flip(c.cumsum_(-1), ws.out((N, V + 1), f64, dev))  # suffix q-mass, accurate at the end
    raw0 = raw[:, :1].clone()
    R = raw.div_(raw0).clamp_max_(1.0)                                     # [N, V + 1], nonincreasing
    pw = _powers(R, k, ws)
    # dW_j = R_j^k - R_{j+1}^k = (q_j / raw0) * (R_j^k - R_{j+1}^k) / (R_j - R_{j+1}), the quotient
    # summed without cancellation (exactly 0 where q_j = 0)
    dW = _pow_quotient(pw, k, ws).mul_(qs).div_(raw0)
    W = torch.neg(R, out=ws.out((N, V + 1), f64, dev)).add_(1.0) if k == 1 else pw[k].neg_().add_(1.0)
    del pw, R, raw
    d = c                                                                  # ("prefix" is free again)
    d[:, 1:] = ps
    d.cumsum_(-1).sub_(W)                                                  # P - W, [N, V + 1]
    del W
    d[:, 0] = 0.0
    idx = ws.empty((N, V + 1), torch.long, dev)              # (cummax / cummin's indices, unused)
    Dr = torch.cummax(d, -1, out=(ws.empty((N, V + 1), f64, dev), idx)).values
    Dstar = Dr[:, -1:].clone()                                             # [N, 1] = max(max d, 0)
    G = torch.sub(Dstar, d, out=ws.out((N, V + 1), f64, dev))
    Gf = _flip(G, ws.out((N, V + 1), f64, dev))
    Ef = torch.cummin(Gf, -1, out=(ws.empty((N, V + 1), f64, dev), idx)).values
    E = _flip(Ef, ws.out((N, V + 1), f64, dev))                    # running min from the right
    touch = torch.eq(E, G, out=ws.out((N, V + 1), torch.bool, dev))
    touch.logical_or_(torch.eq(Dr, d, out=ws.out((N, V + 1), torch.bool, dev)))
    del G, d, Gf, Ef
    b = torch.sub(Dr[:, 1:], Dr[:, :-1], out=ws.out((N, V), f64, dev)).neg_().add_(ps)
    b.add_(torch.sub(E[:, 1:], E[:, :-1], out=ws.out((N, V), f64, dev))).clamp_min_(0.0)
    del Dr, E
    zq = torch.eq(qs, 0, out=ws.out((N, V), torch.bool, dev))
    # intervals touching W at both ends get dW; so do the q = 0 tokens (dW = 0 there)
    both = torch.logical_and(touch[:, :-1], touch[:, 1:], out=ws.out((N, V), torch.bool, dev))
    both.logical_or_(zq)
    return torch.where(both, dW, b, out=b), dW, Dstar[:, 0]


def _merge_sorted(a: torch.Tensor, c: torch.Tensor,
                  ws: Workspace = FRESH) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise merge of nondecreasing [N, La] and [N, Lc] tensors (a before equal c values).

    Returns (merged [N, La + Lc], ia, ic): ia / ic count the elements of a / c at merged positions
    <= n, minus one, i.e. the index of the last element of a / c at or before position n."""
    N, La = a.shape
    L = La + c.shape[1]
    if a.device.type == "cpu" and not (a.requires_grad or c.requires_grad):
        # NumPy's stable sort (timsort) of the two concatenated sorted runs is one linear merge, ties
        # in concatenation order (a first): measured 0.4 ms against 1.3 ms for the searchsorted below at
        # La + Lc = 77100
        import numpy as np

        both = torch.cat([a, c], -1, out=ws.out((N, L), a.dtype, a.device))
        perm = torch.from_numpy(np.argsort(both.numpy(), axis=-1, kind="stable"))
        from_a = torch.lt(perm, La, out=ws.out((N, L), torch.bool, a.device))
        out = torch.gather(both, 1, perm, out=ws.out((N, L), a.dtype, a.device))
        ia = torch.cumsum(from_a, -1, out=ws.out((N, L), torch.long, a.device)).sub_(1)
        ic = torch.sub(_arange(L, a.device), ia, out=ws.out((N, L), torch.long, a.device)).sub_(1)
        return out, ia, ic
    return _merge_sorted_search(a, c)


def _merge_sorted_search(a: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_merge_sorted` by binary search (any device; the GPU path)."""
    N, La = a.shape
    L = La + c.shape[1]
    pa = _arange(La, a.device) + torch.searchsorted(c, a, right=False)   # final places of a (before equal c)
    pc = _arange(c.shape[1], a.device) + torch.searchsorted(a, c, right=True)   # and of c (no host read)
    from_a = torch.zeros(N, L, dtype=torch.bool, device=a.device).scatter_(1, pa, True)
    out = a.new_empty(N, L).scatter_(1, pa, a).scatter_(1, pc, c)
    ia = from_a.cumsum(-1) - 1
    ic = _arange(L, a.device) - ia - 1
    return out, ia, ic


def _values_at(x: torch.Tensor, idx: torch.Tensor, valid: torch.Tensor | None,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """[N, C]: x [N, Vs] at the compacted columns idx, 0 past each row's count (into out when given)."""
    vals = torch.gather(x, 1, idx if valid is None else idx.clamp_max(x.shape[1] - 1), out=out)
    return vals if valid is None else vals.masked_fill_(~valid, 0.0)


def _prefix(vals: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """[N, C + 1]: 0, then the inclusive cumulative sum of vals (the boundaries of the compacted
    tokens' masses; the zeros past a row's count change no rounded sum). Into out when given."""
    if out is None:
        out = vals.new_empty(vals.shape[0], vals.shape[1] + 1)
    out[:, :1] = 0.0
    c = torch.cumsum(vals, -1, out=out[:, 1:])
    if c.device.type != "cpu":
        out[:, 1:] = _monotone(c)
    return out


_SCRATCH = 256   # scratch columns that absorb unused pool entries in the scatter-reduces (GPU; see below)


def _pool_entries(xs, xd, left, right, ok, Vs: int, ws: Workspace = FRESH):
    """The pool entries that the per-draft search reads (RaceState's cum, first, last and base): entry
    n < M is the surplus side of slot n (xs, at rank left[n]), entry M + n its deficit side (xd, at
    right[n]); ok: the used slots. Returns (cum [N, 2M], first, last, base [N, Vs])."""
    N, M = xs.shape
    f64, i64, dev = xs.dtype, torch.long, xs.device
    cum = _monotone(torch.cat([xs, xd], -1, out=ws.out((N, 2 * M), f64, dev)).cumsum_(-1))
    # ([N, 2M] nondecreasing, see _monotone)
    cum_excl = ws.empty((N, 2 * M), f64, dev)
    cum_excl[:, :1] = 0.0
    cum_excl[:, 1:] = cum[:, :-1]
    valid = ws.empty((N, 2 * M), torch.bool, dev)
    torch.gt(xs, 0, out=valid[:, :M]).logical_and_(ok)
    torch.gt(xd, 0, out=valid[:, M:]).logical_and_(ok)
    ent = _arange(2 * M, dev)
    # unused entries go to scratch columns past Vs: one on the CPU; on GPUs spread over _SCRATCH columns
    # (GPU atomics on one address serialise)
    n_scratch = 1 if dev.type == "cpu" else _SCRATCH
    tok = torch.cat([left, right], -1, out=ws.out((N, 2 * M), i64, dev))
    if n_scratch > 1:
        tok = torch.where(valid, tok, Vs + ent % n_scratch)
    else:
        tok = tok.masked_fill_(torch.logical_not(valid, out=ws.out((N, 2 * M), torch.bool, dev)), Vs)
    ent = ent.expand(N, 2 * M)
    first = ws.full((N, Vs + n_scratch), 2 * M, i64, dev).scatter_reduce_(1, tok, ent, "amin")[:, :Vs]
    last = ws.full((N, Vs + n_scratch), -1, i64, dev).scatter_reduce_(1, tok, ent, "amax")[:, :Vs]
    first_c = torch.clamp(first, max=2 * M - 1, out=ws.out((N, Vs), i64, dev))
    base = torch.gather(cum_excl, 1, first_c, out=ws.out((N, Vs), f64, dev))
    return cum, first, last, base
