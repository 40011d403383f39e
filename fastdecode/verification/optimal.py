"""The OT-optimal verifier for k i.i.d. drafts ("optimal"), docs/verifiers.md section 1.

Terms. Drafts X_1..X_k are i.i.d. from q; p is the target. A *selection marginal* b is the law of the
draft a verifier picks; single-draft speculative sampling of the picked draft Y against p with proposal
b (accept with probability min(1, p(Y)/b(Y)), else sample norm(max(0, p - b))) emits exactly p and
accepts with probability sum_x min(p(x), b(x)). The achievable b are those with
b(T) <= 1 - (1 - q(T))^k for every token set T; the best of them reaches the optimal-transport rate
alpha* = 1 - max_H [q(H)^k - p(H)] (Hu et al., "Towards Optimal Multi-draft Speculative Decoding",
ICLR 2025; H runs over prefixes of the tokens sorted by p/q ascending).

Construction (all batched over rows, float64, O(Vs log Vs) per row with Vs the support of p and q:
tokens with p = q = 0 are dropped before sorting; no loop over rows or tokens):

1. *Rank order*: tokens sorted by p/q descending (q = 0 < p first, p = q = 0 last). Rank j owns the
   time interval [Q_j, Q_j + q_j) of [0, 1]. W_j = 1 - R_{j+1}^k (R: suffix q-mass) is the chance that
   some draft has rank <= j and dW_j its increment: the law of the draft with the smallest rank.
2. *Optimal b*: with P the cumulative p and d = P - W, D* = max(max d, 0) and alpha* = 1 - D*; b is
   p minus the growth of the running max of d before the cut argmax d, p plus the growth of the running
   min from the right of W - P + D* after it, and exactly dW where both interval ends touch W.
3. *Race*: every draft draws a time; the earliest time wins. A draft of rank j draws its time in its
   own interval with probability lam_j (the selection law is then dW). Surplus (dW > b) and deficit
   (dW < b) masses are matched first-in-first-out along the rank order into *pools* (a surplus rank i
   before a deficit rank i'); in a pool, i spends time mass xs and i' time mass xd, and a draft of either
   token that lands in the pool draws its time in i's interval with probability xs / (xs + xd), else in
   i''s. Each interval keeps total time mass q_i, so the time of a draft is uniform on [0, 1] and the
   selected token has law b_real_j = sum_i q_j D[j, i] dW_i / q_i (D: the interval kernel).
4. *Verification* uses b_real, recomputed from the kernel that is actually sampled, so the output is
   exactly p even with rounding; acceptance = sum min(p, b_real) = alpha* up to rounding (~1e-13).

Per draft, the selection costs one binary search (kernels/optimal_select.py; a Triton kernel on GPUs).
Drafts must be sampled from q itself (q(X) > 0): a draft of a q = 0 token is not checked for.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from .. import graphs, kernels
from . import workspace
from .optimal_steps import (_arange, _argsort_keys, _compact, _compact_fixed, _merge_sorted, _normalise, _optimal_b,
                            _pool_entries, _prefix, _sort_key, _values_at)
from .primitives import VerifyResult, residual, sample


@dataclass
class RaceState:
    """The precomputed race of one verification step, per row (rank order unless said otherwise).

    Only the first Vs ranks are kept (Vs: the largest number of tokens with p > 0 or q > 0 in a row;
    the others have p = q = 0, rank last and are never sorted). M = nS + nD + 1 pool slots per row
    (nS / nD: the largest number of ranks with a surplus / a deficit; padded, unused slots have zero
    mass). Pool entries: entry n < M is
    the surplus side of slot n, entry M + n its deficit side; each token's entries are contiguous.
    """

    order: torch.Tensor    # [N, Vs] long: token id at rank j (ranks past a row's support: p = q = 0)
    rank: torch.Tensor     # [N, V] long: rank of token id x
    ell: torch.Tensor      # [N, Vs] f64: q in rank order (length of the rank's time interval)
    own: torch.Tensor      # [N, Vs] f64: time mass a rank keeps in its own interval (lam * ell)
    first: torch.Tensor    # [N, Vs] long: first pool entry of the rank (2M if it has none)
    last: torch.Tensor     # [N, Vs] long: last pool entry of the rank (-1 if it has none)
    base: torch.Tensor     # [N, Vs] f64: cumulative entry mass before the rank's first entry
    cum: torch.Tensor      # [N, 2M] f64: inclusive cumulative sum of entry masses
    left: torch.Tensor     # [N, M] long: surplus rank of each pool slot
    right: torch.Tensor    # [N, M] long: deficit rank of each pool slot
    xs: torch.Tensor       # [N, M] f64: time mass of the surplus rank in the pool (0 if unused)
    xd: torch.Tensor       # [N, M] f64: time mass of the deficit rank in the pool (0 if unused)
    p: torch.Tensor        # [N, V] f64: p, renormalised (token order)
    b_rank: torch.Tensor   # [N, Vs] f64: optimal selection marginal (rank order; token order: .b)
    b_real_rank: torch.Tensor  # [N, Vs] f64: selection marginal of the sampled race (rank order; .b_real)
    alpha: torch.Tensor    # [N] f64: alpha* = 1 - D*
    k: int

    @property
    def slots(self) -> int:
        return self.left.shape[1]

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[N, Vs] rank order -> [N, V] token order (0 off the support; padding ranks hold 0)."""
        return self.p.new_zeros(self.p.shape).scatter_add_(1, self.order, x)

    @property
    def b(self) -> torch.Tensor:
        """[N, V] f64: optimal selection marginal (token order), computed on access."""
        return self.to_tokens(self.b_rank)

    @property
    def b_real(self) -> torch.Tensor:
        """[N, V] f64: selection marginal of the sampled race (token order), computed on access: the
        verification reads it at the selected draft only, and in full only for a rejected row."""
        return self.to_tokens(self.b_real_rank)


def build_race(p: torch.Tensor, q: torch.Tensor, k: int, fixed: bool | None = None, record: bool = False) -> RaceState:
    """Build the race of section 1 for every row. p, q: [N, V] probabilities; k: number of i.i.d. drafts.

    Cost (see the README's profile): one stable sort of the tokens with p > 0 or q > 0 (tokens with
    p = q = 0 are dropped before sorting, they rank last and take no part), O(Vs) scans, and the pools,
    built only over the tokens with a surplus or a deficit (compacted before the FIFO merge).

    fixed (default: on CUDA): no host read at all, so nothing waits for the device. The support is not
    compacted (tokens with p = q = 0 are sorted last with the others: Vs = V) and the surplus and deficit
    lists keep the full width (:func:`~.optimal_steps._compact_fixed`); the extra entries are zero masses,
    the padding a batch of rows already has, so the race's values on the support are those of the
    compacted build. On a GPU the compacted build's time was its launches and its host reads, not its
    arithmetic over 152k entries.

    record (CUDA; opt-in, not yet timed on a GPU): the fixed-width build replayed from a CUDA graph recorded
    on the first call of each (rows, V, k, dtype): one launch instead of some hundred (see
    :func:`_recorded_build`).

    Memory: the tensors come from this thread's workspace (:mod:`.workspace`: buffers reused once no
    tensor uses them, so the pages of the last build's are not faulted in again)."""
    if record:
        return _recorded_build(p, q, k)
    ws = workspace.local()
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if p.dim() != 2 or p.shape != q.shape:
        raise ValueError(f"p and q must be [N, V] tensors of the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    N, V = p.shape
    dev = p.device
    cpu = dev.type == "cpu"
    fixed = not cpu if fixed is None else fixed
    f64, i64, bool_ = torch.float64, torch.long, torch.bool
    # the race is not differentiable (a sort, comparisons); detached, its steps may run in place
    p64 = _normalise(p.detach(), ws.out((N, V), f64, dev))
    q64 = _normalise(q.detach(), ws.out((N, V), f64, dev))
    # support: tokens with p > 0 or q > 0 (Vs: the largest count over the rows); the others play no part
    nz = None if fixed else torch.gt(p64, 0, out=ws.out((N, V), bool_, dev))
    if nz is not None:
        nz.logical_or_(torch.gt(q64, 0, out=ws.out((N, V), bool_, dev)))
    if fixed or (N and bool(nz.all())):
        ps_t, qs_t, sup = p64, q64, None
    else:
        sup, valid = _compact(nz, V, ws)                                   # padding -> column V (zeros)
        if valid is None:                                                  # (one row: no padding)
            pad = lambda t: torch.gather(t, 1, sup, out=ws.out(sup.shape, f64, dev))   # noqa: E731
        else:
            pad = lambda t: torch.cat([t, t.new_zeros(N, 1)], -1).gather(1, sup)   # noqa: E731
        ps_t, qs_t = pad(p64), pad(q64)
    del nz
    Vs = ps_t.shape[1]
    # rank -> support column (dense rows: rank -> token id, the race's order)
    order_s = _argsort_keys(_sort_key(ps_t, qs_t, ws), ws)
    ps = torch.gather(ps_t, 1, order_s, out=ws.out((N, Vs), f64, dev))
    ell = torch.gather(qs_t, 1, order_s, out=ws.out((N, Vs), f64, dev))
    order = order_s if sup is None else torch.gather(sup, 1, order_s, out=ws.out((N, Vs), i64, dev))
    # (order: rank -> token id, V for padding)
    if sup is None:                                                        # order is a permutation of 0..V-1
        rank = ws.empty((N, V), i64, dev).scatter_(1, order, _arange(Vs, dev).expand(N, Vs))
    else:
        rank = ws.full((N, V + 1), Vs - 1, i64, dev)
        rank = rank.scatter_(1, order, _arange(Vs, dev).expand(N, Vs))[:, :V]
    if sup is not None:
        order = order.clamp_max_(V - 1)                                    # padding ranks (p = q = 0)
    del ps_t, qs_t, q64
    b, dW, Dstar = _optimal_b(ps, ell, k, ws)
    del ps

    # FIFO matching of surplus and deficit along the rank order -> pool slots, over the compacted lists
    # of the ranks with a surplus (sr) and with a deficit (dr) only
    # (surplus = max(diff, 0) and deficit = max(-diff, 0) are read at the compacted ranks only)
    diff = torch.sub(dW, b, out=ws.out((N, Vs), f64, dev))
    compact = _compact_fixed if fixed else _compact
    sr, sv = compact(torch.gt(diff, 0, out=ws.out((N, Vs), bool_, dev)), 0, ws)
    dr, dv = compact(torch.lt(diff, 0, out=ws.out((N, Vs), bool_, dev)), 0, ws)
    s_vals = _values_at(diff, sr, sv, ws.out(sr.shape, f64, dev))             # [N, nS]
    d_vals = _values_at(diff, dr, dv, ws.out(dr.shape, f64, dev)).neg_()      # [N, nD]
    del diff
    Sc = _prefix(s_vals, ws.out((N, sr.shape[1] + 1), f64, dev))   # [N, nS + 1]
    Dc = _prefix(d_vals, ws.out((N, dr.shape[1] + 1), f64, dev))   # [N, nD + 1]
    tot = torch.minimum(Sc[:, -1:], Dc[:, -1:])
    merged, ia, ic = _merge_sorted(Sc, Dc, ws)
    cuts = torch.minimum(merged, tot, out=merged)                          # [N, nS + nD + 2], nondecreasing
    M = cuts.shape[1] - 1                                                  # M = nS + nD + 1 slots
    dL = torch.sub(cuts[:, 1:], cuts[:, :-1], out=ws.out((N, M), f64, dev))
    # slot n = [cuts[n], cuts[n+1]) lies in surplus rank left[n] and deficit rank right[n] (when dL > 0)
    # A slot with dL > 0 lies below tot, so its ia / ic index a compacted rank with a positive surplus /
    # deficit (the boundaries past a row's count, padding included, are >= the row's total >= tot).
    ia_s = torch.clamp(ia[:, :-1], 0, sr.shape[1] - 1, out=ws.out((N, M), i64, dev))
    ic_s = torch.clamp(ic[:, :-1], 0, dr.shape[1] - 1, out=ws.out((N, M), i64, dev))
    left = torch.gather(sr, 1, ia_s, out=ws.out((N, M), i64, dev))
    right = torch.gather(dr, 1, ic_s, out=ws.out((N, M), i64, dev))
    ok = torch.gt(dL, 0, out=ws.out((N, M), bool_, dev))
    ok.logical_and_(torch.lt(left, right, out=ws.out((N, M), bool_, dev)))
    dL = dL.masked_fill_(torch.logical_not(ok, out=ws.out((N, M), bool_, dev)), 0.0)
    del Sc, Dc, merged, ia, ic, cuts, sr, dr
    if not cpu:
        # unused slots add exactly 0 in the scatter-adds below: spread them over the ranks instead of
        # piling them onto one address (GPU atomics on one address serialise)
        spread = _arange(dL.shape[1], dev) % Vs
        left, right = torch.where(ok, left, spread), torch.where(ok, right, spread)
    # per-slot values only (the densities m = dW / ell and beta = b / ell at the slots' two ranks; a used
    # slot's ranks have q > 0, an unused one has dL = 0 and gets 0 below)
    # (q < 1e-300 is treated as 1e-300 here, as in lam below; an unused slot's rank may have q = 0,
    # where dW = b = 0 and the densities are 0)
    slot = lambda: ws.out((N, M), f64, dev)                              # noqa: E731
    ell_l, ell_r = torch.gather(ell, 1, left, out=slot()), torch.gather(ell, 1, right, out=slot())
    safe_l = torch.clamp(ell_l, min=1e-300, out=slot())
    safe_r = torch.clamp(ell_r, min=1e-300, out=slot())
    m_l = torch.gather(dW, 1, left, out=slot()).div_(safe_l)
    m_r = torch.gather(dW, 1, right, out=slot()).div_(safe_r)
    beta_l = torch.gather(b, 1, left, out=slot()).div_(safe_l)
    s_at = torch.gather(s_vals, 1, ia_s, out=slot()).clamp_min_(1e-300)
    xs = torch.mul(dL, ell_l, out=ws.out((N, M), f64, dev)).div_(s_at)
    xd = torch.div(dL, beta_l.sub_(m_r).clamp_min_(1e-300), out=ws.out((N, M), f64, dev))
    del safe_l, safe_r, beta_l, dL, s_vals, d_vals, ia_s, ic_s, s_at
    used = ws.full((N, Vs), 0.0, f64, dev).scatter_add_(1, left, xs).scatter_add_(1, right, xd)
    # rounding guard: a rank whose pools take more than its interval (used > ell) has them scaled by
    # ell / used (on the CPU only when some rank needs it: otherwise the scale is exactly 1). Its lam is
    # then 0: the clamp below gives 0 from the unscaled used (> ell), which the scaled pools fill to
    # rounding, so used is not summed again.
    over = torch.gt(used, ell, out=ws.out((N, Vs), bool_, dev))
    if not cpu or bool(over.any()):
        scale = torch.div(ell, used, out=ws.out((N, Vs), f64, dev))
        scale = scale.masked_fill_(over.logical_not_(), 1.0)              # used > ell >= 0 where taken
        xs.mul_(torch.gather(scale, 1, left, out=slot()))
        xd.mul_(torch.gather(scale, 1, right, out=slot()))
        del scale
    del over
    lam = used.div_(torch.clamp(ell, min=1e-300, out=ws.out((N, Vs), f64, dev)))
    lam = lam.neg_().add_(1.0).clamp_(0.0, 1.0)                           # 1 where q = 0 (no pools)
    own = torch.mul(lam, ell, out=ws.out((N, Vs), f64, dev))

    # b_real: the selection law of exactly this kernel (own * m = lam * dW: the own-interval part)
    share = m_l.mul_(xs).add_(m_r.mul_(xd))
    share = share.div_(torch.add(xs, xd, out=slot()).clamp_min_(1e-300))   # 0 on unused slots
    b_real_s = torch.mul(lam, dW, out=ws.out((N, Vs), f64, dev))
    b_real_s.scatter_add_(1, left, torch.mul(xs, share, out=slot()))
    b_real_s.scatter_add_(1, right, torch.mul(xd, share, out=slot()))
    del lam, dW, m_l, m_r, share, ell_l, ell_r

    cum, first, last, base = _pool_entries(xs, xd, left, right, ok, Vs, ws)   # for the per-draft search
    return RaceState(order=order, rank=rank, ell=ell, own=own, first=first, last=last, base=base, cum=cum,
                     left=left, right=right, xs=xs, xd=xd, p=p64, b_rank=b, b_real_rank=b_real_s,
                     alpha=1.0 - Dstar, k=k)


_RECORDED: dict = {}   # (rows, V, k, dtype, device) -> (graph, p buffer, q buffer, the graph's RaceState)


def _recorded_build(p: torch.Tensor, q: torch.Tensor, k: int) -> RaceState:
    """build_race(p, q, k, fixed=True) from a recording: the fixed-width build makes no host read and its
    shapes depend on (rows, V) alone, so one recorded graph per (rows, V, k, dtype, device) replays it for
    any p and q (copied into the graph's input buffers). The result holds copies of the graph's outputs (a
    later replay rewrites those), so it may be kept like a fresh build's."""
    if p.dim() != 2 or p.shape != q.shape:
        raise ValueError(f"p and q must be [N, V] tensors of the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    key = (tuple(p.shape), k, p.dtype, q.dtype, p.device)
    entry = _RECORDED.get(key)
    if entry is None:
        pb, qb = p.detach().clone(), q.detach().clone()
        graph, st = graphs.record(lambda: build_race(pb, qb, k, fixed=True), p.device)
        entry = _RECORDED[key] = (graph, pb, qb, st)
    graph, pb, qb, st = entry
    pb.copy_(p)
    qb.copy_(q)
    graph.replay()
    return RaceState(**{f.name: getattr(st, f.name).clone() for f in fields(st) if f.name != "k"}, k=k)


def selection_marginal(p: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    """[N, V] float64 law of the draft the race selects (b_real): rows sum to 1 up to rounding."""
    return build_race(p, q, k).b_real   # (b_real: a fresh tensor)


def race_uniforms(n: int, k: int, generator, device) -> torch.Tensor:
    """[n, k, 3] float64 uniforms: where in its time mass a draft falls, which side of a pool, tie-break."""
    return torch.rand(n, k, 3, generator=generator, device=device, dtype=torch.float64)


def race_select(state: RaceState, drafts: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """[N] index (in draw order) of the draft with the earliest race time. drafts: [N, k]; u: [N, k, 3]."""
    ranks = state.rank.gather(1, drafts.long()).clamp_max(state.ell.shape[1] - 1)   # q(draft) > 0 => in range
    return kernels.optimal_select(ranks, u, state.ell, state.own, state.first, state.last, state.base,
                                  state.cum, state.left, state.right, state.xs, state.xd)


def speculative_against(p: torch.Tensor, b: torch.Tensor, y: torch.Tensor, generator=None):
    """Single-draft speculative sampling of y [N] (law b) against p (both [N, V] float64).
    Returns (tokens [N], accepted [N] bool)."""
    return _speculative(p, y, b.gather(1, y[:, None])[:, 0], lambda rows: b if rows is None else b.index_select(0, rows),
                        generator)


def _sample_residual(p: torch.Tensor, b: torch.Tensor, generator) -> torch.Tensor:
    """[n] one token per row from norm(max(0, p - b)) (p where that has no mass, as ``residual``), on the
    CPU by inverse CDF: a cumulative sum and one uniform per row instead of ``sample``'s V exponential
    draws and the normalisation (same law; a different use of the generator)."""
    c = (p - b).clamp_min_(0.0).cumsum_(-1)
    empty = c[:, -1] <= 1e-12 * p.shape[1]
    if bool(empty.any()):
        c = torch.where(empty[:, None], p.cumsum(-1), c)
    u = torch.rand(p.shape[0], 1, generator=generator, dtype=p.dtype, device=p.device) * c[:, -1:]
    # the first token whose cumulative mass exceeds u: it has mass > 0 (the CPU's sequential sum never
    # decreases, so equal neighbours mean a token of mass 0, which is skipped)
    return torch.searchsorted(c, u, right=True)[:, 0].clamp_max_(p.shape[1] - 1)


def _speculative(p: torch.Tensor, y: torch.Tensor, by: torch.Tensor, b_rows, generator):
    """speculative_against with by = b[y] given and b_rows(rows) -> b [len(rows), V] at those rows (all
    rows for None), called only when a residual is drawn."""
    py = p.gather(1, y[:, None])[:, 0]
    u = torch.rand(y.shape[0], generator=generator, device=p.device, dtype=torch.float64)
    accepted = u * by < py
    if p.device.type == "cpu":
        # the residual (passes over V per row) only for the rejected rows: the
        # residual draw is independent of the rest, so skipping it on accepted rows leaves the law as is
        rej = (~accepted).nonzero()[:, 0]
        if rej.shape[0] == 0:
            return y, accepted
        if rej.shape[0] < y.shape[0]:
            tokens = y.clone()
            tokens[rej] = _sample_residual(p.index_select(0, rej), b_rows(rej), generator)
            return tokens, accepted
        return _sample_residual(p, b_rows(None), generator), accepted
    res = sample(residual(p, b_rows(None)), generator)                     # one batched pass, no host sync
    return torch.where(accepted, y, res), accepted


def race_row(state: RaceState, i: int) -> RaceState:
    """Row i of a batched race as a one-row race (views, no copy)."""
    return RaceState(**{f.name: getattr(state, f.name)[i:i + 1] for f in fields(state) if f.name != "k"},
                     k=state.k)


def build_races(p: torch.Tensor, q: torch.Tensor, ks: list[int]) -> list[RaceState]:
    """One-row races for rows with different numbers of drafts (the nodes of a draft tree): one batched
    :func:`build_race` per distinct k (the race depends on k through W = 1 - R^k). p, q: [N, V];
    ks: N ints. Row i of the result equals ``build_race(p[i:i+1], q[i:i+1], ks[i])`` in every value
    that the selection and the verification read (padding aside), so verifying with it consumes the
    generator and decides exactly as :func:`verify_optimal` does."""
    if len(ks) != p.shape[0]:
        raise ValueError(f"need one k per row: {len(ks)} ks for {p.shape[0]} rows")
    out: list[RaceState | None] = [None] * len(ks)
    for k in sorted(set(ks)):
        rows = [i for i, kk in enumerate(ks) if kk == k]
        idx = torch.tensor(rows, device=p.device)
        st = build_race(p.index_select(0, idx), q.index_select(0, idx), k)
        for j, i in enumerate(rows):
            out[i] = race_row(st, j)
    return out


def _verify_one_draft(p64: torch.Tensor, q64: torch.Tensor, drafts: torch.Tensor, generator) -> VerifyResult:
    """k = 1: the race selects the one draft and b = q exactly (selection law of one draft), so the
    optimal verifier is classic speculative sampling against q: no race to build (the chains below a
    tree's first level are mostly one draw per node)."""
    y = drafts[:, 0].long()
    tokens, accepted = speculative_against(p64, q64, y, generator)
    return VerifyResult(tokens, accepted, torch.where(accepted, 0, -1))


def verify_prepared(state: RaceState, drafts: torch.Tensor, generator=None) -> VerifyResult:
    """verify_optimal with the race already built (``state`` for the rows of drafts [N, k])."""
    if drafts.shape[1] != state.k:
        raise ValueError(f"the race was built for k = {state.k} drafts, got {drafts.shape[1]}")
    if state.k == 1:                        # the q verify_optimal normalises, from the race (exact copy)
        q64 = state.p.new_zeros(state.p.shape).scatter_add_(1, state.order, state.ell)
        return _verify_one_draft(state.p, q64, drafts, generator)
    u = race_uniforms(drafts.shape[0], drafts.shape[1], generator, drafts.device)
    sel = race_select(state, drafts, u)                                    # [N]
    y = drafts.long().gather(1, sel[:, None])[:, 0]
    ry = state.rank.gather(1, y[:, None]).clamp_max_(state.ell.shape[1] - 1)   # b_real[y], from rank order
    by = state.b_real_rank.gather(1, ry)[:, 0]
    b_rows = lambda rows: (state.b_real if rows is None else                   # noqa: E731
                           state.p.new_zeros(rows.shape[0], state.p.shape[1]).scatter_add_(
                               1, state.order.index_select(0, rows), state.b_real_rank.index_select(0, rows)))
    tokens, accepted = _speculative(state.p, y, by, b_rows, generator)
    return VerifyResult(tokens, accepted, torch.where(accepted, sel, torch.full_like(sel, -1)))


def verify_optimal(p, q, drafts, generator=None) -> VerifyResult:
    """p, q: [N, V]; drafts: [N, k] i.i.d. from q. Select one draft by the race, then verify it against
    p with proposal b_real. Emits exactly p; accepts with probability alpha*."""
    if drafts.shape[1] == 1:
        return _verify_one_draft(_normalise(p.detach()), _normalise(q.detach()), drafts, generator)
    return verify_prepared(build_race(p, q, drafts.shape[1]), drafts, generator)


def acceptance_optimal(p, q, k: int) -> torch.Tensor:
    """[N] float64: sum_x min(p(x), b_real(x)), equal to alpha* up to rounding."""
    state = build_race(p, q, k)
    return torch.minimum(state.p, state.b_real).sum(-1)


def alpha_star(p, q, k: int) -> torch.Tensor:
    """[N] float64 optimal acceptance rate for k i.i.d. drafts, 1 - D* (from the same construction)."""
    return build_race(p, q, k).alpha   # (1 - D*: a fresh tensor)
