"""The OT-optimal verifier for k i.i.d. drafts ("optimal"), docs/optimal_verifier.md section 1.

Terms. Drafts X_1..X_k are i.i.d. from q; p is the target. A *selection marginal* b is the law of the
draft a verifier picks; single-draft speculative sampling of the picked draft Y against p with proposal
b (accept with probability min(1, p(Y)/b(Y)), else sample norm(max(0, p - b))) emits exactly p and
accepts with probability sum_x min(p(x), b(x)). The achievable b are those with
b(T) <= 1 - (1 - q(T))^k for every token set T; the best of them reaches the optimal-transport rate
alpha* = 1 - max_H [q(H)^k - p(H)] (Hu et al., "Towards Optimal Multi-draft Speculative Decoding",
ICLR 2025; H runs over prefixes of the tokens sorted by p/q ascending).

Construction (all batched over rows, float64, O(V log V) per row; no loop over rows or tokens):

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

from dataclasses import dataclass

import torch

from ..kernels.optimal_select import optimal_select_dispatch
from .common import VerifyResult, residual, sample


@dataclass
class RaceState:
    """The precomputed race of one verification step, per row (rank order unless said otherwise).

    Only the first Vs ranks are kept (Vs: the largest number of tokens with p > 0 or q > 0 in a row;
    the others have p = q = 0 and rank last). M = 2 Vs + 1 pool slots per row (padded; unused slots
    have zero mass). Pool entries: entry n < M is
    the surplus side of slot n, entry M + n its deficit side; each token's entries are contiguous.
    """

    order: torch.Tensor    # [N, V] long: token id at rank j
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
    b: torch.Tensor        # [N, V] f64: optimal selection marginal (token order)
    b_real: torch.Tensor   # [N, V] f64: selection marginal of the sampled race (token order)
    alpha: torch.Tensor    # [N] f64: alpha* = 1 - D*
    k: int

    @property
    def slots(self) -> int:
        return self.left.shape[1]


_SCRATCH = 256   # scratch columns that absorb unused pool entries in the scatter-reduces (spread, see above)


def _normalise(t: torch.Tensor) -> torch.Tensor:
    t = t.double()
    return t / t.sum(-1, keepdim=True)


def ratio_order(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """[N, V] token ids sorted by p/q descending (q = 0 < p first, p = q = 0 last), stable."""
    r = (p / q).nan_to_num(nan=-1.0, posinf=float("inf"))              # q = 0: inf if p > 0, 0/0 -> -1
    return torch.sort(-r, dim=-1, stable=True).indices


def _optimal_b(ps, qs, k: int):
    """Step 1-2 in rank order. Returns (b, dW, Dstar) with b [N, V], dW [N, V], Dstar [N]."""
    N, V = ps.shape
    zero = ps.new_zeros(N, 1)
    raw = torch.cat([qs.flip(-1).cumsum(-1).flip(-1), zero], -1)           # suffix q-mass, accurate at the end
    R = (raw / raw[:, :1]).clamp_max(1.0)                                  # [N, V + 1]
    Rk = R.pow(k)
    W = 1.0 - Rk
    pos = qs > 0
    frac = (qs / raw[:, :-1].clamp_min(1e-300)).clamp_max(1.0)          # q_j / R_j (0 where R_j = 0)
    dW = (Rk[:, :-1] * -torch.expm1(k * torch.log1p(-frac))).masked_fill(~pos, 0.0)
    P = torch.cat([zero, ps.cumsum(-1)], -1)                               # [N, V + 1]
    d = P - W
    d[:, 0] = 0.0
    Dr = d.clamp_min(0.0).cummax(-1).values
    js = d.argmax(-1, keepdim=True)                                        # [N, 1] the cut (first argmax)
    Dstar = d.gather(1, js).clamp_min(0.0)                                 # [N, 1]
    idx = torch.arange(V + 1, device=ps.device)[None]
    G = torch.where(idx > js, W - P + Dstar, torch.where(idx == js, torch.zeros_like(W), torch.full_like(W, float("inf"))))
    E = G.flip(-1).cummin(-1).values.flip(-1)                              # running min from the right
    before = idx[:, :-1] < js
    b = torch.where(before, ps - Dr.diff(dim=-1), ps + E.diff(dim=-1))
    touch = torch.where(idx >= js, E == G, Dr == d)
    touch[:, 0] = True
    touch[:, -1] = True
    b = b.clamp_min(0.0)
    b = torch.where(touch[:, :-1] & touch[:, 1:] & pos, dW, b)            # intervals touching W at both ends
    return b.masked_fill(~pos, 0.0), dW, Dstar[:, 0]


def _merge_sorted(a: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row-wise merge of two nondecreasing [N, L] tensors (a before equal c values).

    Returns (merged [N, 2L], ia [N, 2L], ic [N, 2L]): ia / ic count the elements of a / c at merged
    positions <= n, minus one, i.e. the index of the last element of a / c at or before position n."""
    N, L = a.shape
    pa = torch.arange(L, device=a.device) + torch.searchsorted(c, a, right=False)   # final places of a
    from_a = torch.zeros(N, 2 * L, dtype=torch.bool, device=a.device).scatter_(1, pa, True)
    out = a.new_empty(N, 2 * L).scatter_(1, pa, a)
    out.masked_scatter_(~from_a, c)                    # c fills the other L places of each row, in order
    ia = from_a.cumsum(-1) - 1
    ic = torch.arange(2 * L, device=a.device) - ia - 1
    return out, ia, ic


def build_race(p: torch.Tensor, q: torch.Tensor, k: int) -> RaceState:
    """Build the race of section 1 for every row. p, q: [N, V] probabilities; k: number of i.i.d. drafts."""
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if p.dim() != 2 or p.shape != q.shape:
        raise ValueError(f"p and q must be [N, V] tensors of the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    p64, q64 = _normalise(p), _normalise(q)
    N, V = p64.shape
    dev = p64.device
    order = ratio_order(p64, q64)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(V, device=dev).expand(N, V))
    # tokens with p = q = 0 rank last and play no part: keep the first Vs ranks (the largest support)
    Vs = max(1, int(((p64 > 0) | (q64 > 0)).sum(-1).max())) if p64.shape[0] else 1
    top = order[:, :Vs]
    ps, ell = p64.gather(1, top), q64.gather(1, top)
    b, dW, Dstar = _optimal_b(ps, ell, k)
    pos = ell > 0
    safe_ell = torch.where(pos, ell, torch.ones_like(ell))
    m = dW / safe_ell                                                     # density of the earliest time
    beta = b / safe_ell                                                   # (dW = b = 0 where q = 0)

    # FIFO matching of surplus and deficit along the rank order -> pool slots
    diff = dW - b
    surplus, deficit = diff.clamp_min(0.0), (-diff).clamp_min(0.0)
    zero = ell.new_zeros(N, 1)
    # cummax: a parallel (GPU) scan of nonnegative numbers need not be monotone in floating point
    Sc = torch.cat([zero, surplus.cumsum(-1)], -1).cummax(-1).values      # [N, Vs + 1]
    Dc = torch.cat([zero, deficit.cumsum(-1)], -1).cummax(-1).values
    tot = torch.minimum(Sc[:, -1:], Dc[:, -1:])
    merged, ia, ic = _merge_sorted(Sc, Dc)
    cuts = torch.minimum(merged, tot)                                     # [N, 2 Vs + 2], nondecreasing
    dL = cuts[:, 1:] - cuts[:, :-1]                                       # M = 2 Vs + 1 slots
    # slot n = [cuts[n], cuts[n+1]) lies in surplus rank left[n] and deficit rank right[n] (when dL > 0)
    left, right = ia[:, :-1].clamp(0, Vs - 1), ic[:, :-1].clamp(0, Vs - 1)
    ok = (dL > 0) & (surplus.gather(1, left) > 0) & (deficit.gather(1, right) > 0) & (left < right)
    dL = dL.masked_fill(~ok, 0.0)
    # unused slots add exactly 0 in the scatter-adds below: spread them over the ranks instead of piling
    # them onto one address (GPU atomics on one address serialise)
    spread = torch.arange(dL.shape[1], device=dev) % Vs
    left, right = torch.where(ok, left, spread), torch.where(ok, right, spread)
    xs = dL * ell.gather(1, left) / surplus.gather(1, left).clamp_min(1e-300)
    xd = dL / (beta.gather(1, left) - m.gather(1, right)).clamp_min(1e-300)
    used = ell.new_zeros(N, Vs).scatter_add_(1, left, xs).scatter_add_(1, right, xd)
    scale = (ell / used.clamp_min(1e-300)).clamp_max(1.0)                 # rounding guard: used <= ell
    xs, xd = xs * scale.gather(1, left), xd * scale.gather(1, right)
    used = ell.new_zeros(N, Vs).scatter_add_(1, left, xs).scatter_add_(1, right, xd)
    lam = (1.0 - used / safe_ell).clamp(0.0, 1.0)                         # 1 where q = 0 (no pools)
    own = lam * ell

    # b_real: the selection law of exactly this kernel
    g = xs + xd
    cm = xs * m.gather(1, left) + xd * m.gather(1, right)
    share = cm / g.clamp_min(1e-300)                                      # 0 on unused slots
    b_real_s = own * m
    b_real_s = b_real_s.scatter_add(1, left, xs * share).scatter_add(1, right, xd * share)

    # pool entries for the per-draft search
    M = left.shape[1]
    mass = torch.cat([xs, xd], -1)                                        # [N, 2M]
    cum = mass.cumsum(-1).cummax(-1).values                               # nondecreasing (see Sc)
    cum_excl = torch.cat([zero, cum[:, :-1]], -1)
    tok = torch.cat([left, right], -1)
    valid = torch.cat([ok, ok], -1) & (mass > 0)
    ent = torch.arange(2 * M, device=dev)
    tok = torch.where(valid, tok, Vs + ent % _SCRATCH)                   # invalid entries -> scratch columns
    ent = ent.expand(N, 2 * M)
    first = torch.full((N, Vs + _SCRATCH), 2 * M, dtype=torch.long, device=dev).scatter_reduce(1, tok, ent, "amin")[:, :Vs]
    last = torch.full((N, Vs + _SCRATCH), -1, dtype=torch.long, device=dev).scatter_reduce(1, tok, ent, "amax")[:, :Vs]
    base = cum_excl.gather(1, first.clamp_max(2 * M - 1))

    def to_tokens(x):
        return p64.new_zeros(p64.shape).scatter_(1, top, x)

    return RaceState(order=order, rank=rank, ell=ell, own=own, first=first, last=last, base=base, cum=cum,
                     left=left, right=right, xs=xs, xd=xd, p=p64, b=to_tokens(b), b_real=to_tokens(b_real_s),
                     alpha=1.0 - Dstar, k=k)


def selection_marginal(p: torch.Tensor, q: torch.Tensor, k: int) -> torch.Tensor:
    """[N, V] float64 law of the draft the race selects (b_real): rows sum to 1 up to rounding."""
    return build_race(p, q, k).b_real


def race_uniforms(n: int, k: int, generator, device) -> torch.Tensor:
    """[n, k, 3] float64 uniforms: where in its time mass a draft falls, which side of a pool, tie-break."""
    return torch.rand(n, k, 3, generator=generator, device=device, dtype=torch.float64)


def race_select(state: RaceState, drafts: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """[N] index (in draw order) of the draft with the earliest race time. drafts: [N, k]; u: [N, k, 3]."""
    ranks = state.rank.gather(1, drafts.long()).clamp_max(state.ell.shape[1] - 1)   # q(draft) > 0 => in range
    return optimal_select_dispatch(ranks, u, state.ell, state.own, state.first, state.last, state.base,
                                   state.cum, state.left, state.right, state.xs, state.xd)


def speculative_against(p: torch.Tensor, b: torch.Tensor, y: torch.Tensor, generator=None):
    """Single-draft speculative sampling of y [N] (law b) against p (both [N, V] float64).
    Returns (tokens [N], accepted [N] bool)."""
    py = p.gather(1, y[:, None])[:, 0]
    by = b.gather(1, y[:, None])[:, 0]
    u = torch.rand(y.shape[0], generator=generator, device=p.device, dtype=torch.float64)
    accepted = u * by < py
    res = sample(residual(p, b), generator)
    return torch.where(accepted, y, res), accepted


def verify_optimal(p, q, drafts, generator=None) -> VerifyResult:
    """p, q: [N, V]; drafts: [N, k] i.i.d. from q. Select one draft by the race, then verify it against
    p with proposal b_real. Emits exactly p; accepts with probability alpha*."""
    state = build_race(p, q, drafts.shape[1])
    u = race_uniforms(drafts.shape[0], drafts.shape[1], generator, p.device)
    sel = race_select(state, drafts, u)                                    # [N]
    y = drafts.long().gather(1, sel[:, None])[:, 0]
    tokens, accepted = speculative_against(state.p, state.b_real, y, generator)
    return VerifyResult(tokens, accepted, torch.where(accepted, sel, torch.full_like(sel, -1)))


def acceptance_optimal(p, q, k: int) -> torch.Tensor:
    """[N] float64: sum_x min(p(x), b_real(x)), equal to alpha* up to rounding."""
    state = build_race(p, q, k)
    return torch.minimum(state.p, state.b_real).sum(-1)


def alpha_star(p, q, k: int) -> torch.Tensor:
    """[N] float64 optimal acceptance rate for k i.i.d. drafts, 1 - D* (from the same construction)."""
    return build_race(p, q, k).alpha
