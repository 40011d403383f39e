"""The optimal acceptance rate: the best any lossless verifier can do for a given draft scheme.

Hu et al., "Towards Optimal Multi-draft Speculative Decoding" (ICLR'25), docs/algorithms.md section 3.
A lossless verifier couples the draft tuple X = (X_1..X_k) ~ Q with the output Y ~ p; the best
acceptance P(Y in X) over all couplings is an optimal-transport LP whose dual is a subset selection:

    alpha* = 1 - max_H [ Q(X subset of H) - p(H) ],

and the maximising H is a prefix of the tokens sorted by p/q ascending (V + 1 candidates).

- ``"iid"``: Q(X in H) = q(H)^k, O(V log V) per row.
- ``"without_replacement"`` (Gumbel-top-k / sequential draws; see drafts.py): with exponential clocks
  (token i rings at rate q_i) the drafts are the first k tokens to ring, so with r = 1 - q(H),
      Q(X in H) = int_0^inf r e^{-r t} g_H(t) dt,   g_H(t) = P(sum_{i in H} B_i(t) >= k),
  B_i(t) ~ Bernoulli(1 - e^{-q_i t}). g_H is a Poisson-binomial tail, computed for every prefix H at
  once by a DP over the sorted tokens (a blocked scan: two passes over sqrt(V)-sized blocks plus a
  carry across blocks, all vectorised over rows, quadrature nodes and blocks). The integral is a
  trapezoid rule in s = log t, which converges geometrically for these integrands (error ~ e^{-pi^2/h}),
  after subtracting phi(t) = g_H(inf) (1 - e^{-lam t})^k, whose integral k! lam^k / prod_j (r + j lam) is
  known, so that the integrand vanishes at both ends. Rows where q has fewer than k tokens with q > 0 use the
  exhausted-support convention of drafts.py and a closed form.
- ``"greedy"``: drafts are the top k-1 tokens D of q plus one draw from q' (q outside D,
  renormalised); alpha* = p(D) + sum_{x not in D} min(p(x), q'(x)).

All results are float64 [N]. Inputs are renormalised in float64 first.
"""
from __future__ import annotations

import math

import torch

from .primitives import check_distributions
from .drafts import check_k
from .ratio import RatioTable, ratio_table
_STEP = 0.25            # quadrature step in log t: error ~ exp(-pi^2 / step), measured <= 1e-14 for k <= 8
_STEP_LARGE_K = 0.2     # k > 8 (measured 5e-13 at k = 16 with 0.25, 1e-16 with 0.15)


def optimal_acceptance_rate(p: torch.Tensor, q: torch.Tensor, k: int, scheme: str = "iid",
                            max_elements: int | None = None) -> torch.Tensor:
    """[N] float64: the largest acceptance probability of any lossless verifier of k drafts drawn from
    q [N, V] by ``scheme`` ("iid", "without_replacement" or "greedy") for target p [N, V].
    ``max_elements`` bounds the working memory of the without-replacement computation (float64
    elements per batch of rows; default 2^22 on the CPU, 2^26 on other devices).
    p and q must be tensors [N, V] (a ValueError otherwise; for one distribution pass p[None]); the
    result is clamped to [0, 1] (rows may miss 1 by the tolerance of check_distributions)."""
    check_distributions(p, q)
    check_k(k, p.shape[1], scheme)
    return optimal_acceptance_rate_many(p, q, [k], scheme, max_elements)[0]


def optimal_acceptance_rate_many(p: torch.Tensor, q: torch.Tensor, ks: list[int], scheme: str = "iid",
                                 max_elements: int | None = None) -> torch.Tensor:
    """[len(ks), N] optimal_acceptance_rate for several k, sorting the tokens once (clamped to [0, 1])."""
    check_distributions(p, q)
    if max_elements is None:
        max_elements = 1 << 22 if p.device.type == "cpu" else 1 << 26
    for k in ks:
        check_k(k, p.shape[1], scheme)
    pd, qd = p.double(), q.double()
    pd, qd = pd / pd.sum(-1, keepdim=True), qd / qd.sum(-1, keepdim=True)
    if scheme == "greedy":
        from .greedy_draft import acceptance_greedy_draft
        out = torch.stack([acceptance_greedy_draft(pd, qd, k) for k in ks])
    elif scheme == "iid":
        out = optimal_iid_from_table(ratio_table(pd, qd), ks)
    else:
        ps, qs = _ratio_sorted(pd, qd)
        out = torch.stack([torch.minimum(pd, qd).sum(-1) if k == 1 else _without_replacement(ps, qs, k, max_elements)
                           for k in ks])
    return out.clamp(0, 1)


def optimal_iid_from_table(table: RatioTable, ks: list[int]) -> torch.Tensor:
    """[len(ks), N] the i.i.d. optimum from a ratio_table (the prefixes of p/q ascending are the
    complements of the first j tokens of the table's descending order)."""
    log_q = table.q_rest.log()                                       # q(H)^k = exp(k log q(H)); log 0 = -inf
    return torch.stack([1 - (torch.exp(k * log_q) - table.p_rest).max(-1).values.clamp_min(0) for k in ks])


def _ratio_sorted(p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """p, q [N, V] reordered by p/q ascending: tokens with p = q = 0 first, tokens with q = 0 < p
    last (among themselves by p ascending: the order the exhausted-support case needs)."""
    by = p.argsort(dim=-1, stable=True)
    p1, q1 = p.gather(1, by), q.gather(1, by)
    key = torch.where(q1 > 0, p1 / q1.clamp_min(1e-300),
                      torch.where(p1 > 0, torch.full_like(p1, float("inf")), torch.full_like(p1, -1.0)))
    order = key.argsort(dim=-1, stable=True)
    return p1.gather(1, order), q1.gather(1, order)


def _prefix(x: torch.Tensor) -> torch.Tensor:
    # [N, V] -> [N, V + 1] sums of the first j entries, j = 0..V
    return torch.cat([x.new_zeros(x.shape[0], 1), x.cumsum(-1)], 1)


def _suffix(x: torch.Tensor) -> torch.Tensor:
    # [N, V] -> [N, V + 1] sums of the entries after the first j (accurate when small)
    return torch.cat([x.flip(-1).cumsum(-1).flip(-1), x.new_zeros(x.shape[0], 1)], 1)


def _without_replacement(ps: torch.Tensor, qs: torch.Tensor, k: int, max_elements: int) -> torch.Tensor:
    n_rows, v = ps.shape
    support = (qs > 0).sum(-1)
    out = torch.empty(n_rows, dtype=torch.float64, device=ps.device)
    short = support < k
    if short.any():
        out[short] = _exhausted(ps[short], qs[short], k)
    rows = (~short).nonzero()[:, 0]
    if rows.numel():
        # mass of q outside its top k-1 tokens sets the time scale of the integral
        tail = qs[rows].scatter(1, qs[rows].topk(k - 1, dim=-1).indices, 0.0).sum(-1)
        rows = rows[tail.argsort()]                               # similar grids in one batch
        tail = tail.sort().values
        s_hi = torch.log(300.0 / tail.clamp_min(1e-300))
        nodes = ((s_hi - _log_t_min(k)) / (_STEP if k <= 8 else _STEP_LARGE_K)).ceil().long() + 1
        chunk = math.ceil(math.sqrt(v))
        per_row = int(nodes.max()) * math.ceil(v / chunk) * (k + 2) * 4   # [M, K, k] states and temporaries
        batch = max(1, max_elements // per_row)
        for s in range(0, rows.numel(), batch):
            idx = rows[s : s + batch]
            m = int(nodes[s : s + batch].max())
            out[idx] = _integral(ps[idx], qs[idx], k, tail[s : s + batch], m, chunk)
    return out


def _exhausted(ps: torch.Tensor, qs: torch.Tensor, k: int) -> torch.Tensor:
    """Rows whose q has s < k positive tokens: the drafts are all s of them plus k - s tokens drawn
    uniformly from the other V - s, so Q(X in H) = 1[supp q in H] C(h', k - s) / C(V - s, k - s)
    with h' the number of q = 0 tokens in H."""
    v = ps.shape[1]
    pos = _prefix((qs > 0).double())                               # [R, V + 1] positive tokens in prefix
    s = pos[:, -1:]
    j = torch.arange(v + 1, device=ps.device, dtype=torch.float64)[None, :]
    h = j - pos                                                    # zero-q tokens in the prefix
    need = k - s
    lg = torch.lgamma
    frac = torch.exp(lg(h + 1) - lg((h - need).clamp_min(0) + 1) - lg(v - s + 1) + lg(v - s - need + 1))
    qh = torch.where((pos == s) & (h >= need), frac, torch.zeros_like(frac))
    return 1 - (qh - _prefix(ps)).max(-1).values.clamp_min(0)


def _polymul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # truncated product of polynomials with coefficients in the last dim: [..., n] x [..., n] -> [..., n]
    n = a.shape[-1]
    i = torch.arange(n, device=a.device)
    lag = i[:, None] - i[None, :]                                  # [n, n] m - i
    toeplitz = b[..., lag.clamp_min(0)] * (lag >= 0)
    return (toeplitz @ a[..., None])[..., 0]


def _integral(ps: torch.Tensor, qs: torch.Tensor, k: int, tail: torch.Tensor, m: int, chunk: int) -> torch.Tensor:
    """alpha* for rows with >= k positive q tokens. ps, qs: [R, V] sorted; tail: [R]; m nodes."""
    r_rows, v = ps.shape
    dev = ps.device
    s_lo = _log_t_min(k)
    s_hi = torch.log(300.0 / tail)                                                  # [R]
    h = (s_hi - s_lo) / (m - 1)                                                     # [R] step <= _STEP
    t = torch.exp(s_lo + h[:, None] * torch.arange(m, device=dev, dtype=torch.float64))   # [R, M]
    lam = tail / 6                                                                  # [R]
    blocks = math.ceil(v / chunk)
    pad = blocks * chunk - v
    qb = torch.nn.functional.pad(qs, (0, pad)).view(r_rows, blocks, chunk)          # [R, K, C]
    r_after = _suffix(qs).clamp_min(0)                                              # [R, V + 1]
    g_inf = (_prefix((qs > 0).double()) >= k).double()                              # [R, V + 1]
    r_pad = torch.nn.functional.pad(r_after[:, 1:], (0, pad)).view(r_rows, blocks, chunk)
    g_pad = torch.nn.functional.pad(g_inf[:, 1:], (0, pad)).view(r_rows, blocks, chunk)
    phi = (-torch.expm1(-lam[:, None] * t)) ** k                                    # [R, M] (1 - e^{-lam t})^k
    wt = (h[:, None] * t)[:, :, None]                                               # [R, M, 1] trapezoid h * dt/ds

    def step(state: torch.Tensor, c: int) -> torch.Tensor:
        # multiply every block's polynomial by (a + b z) for its c-th token, a = e^{-q t}, b = 1 - a;
        # state: [k, R, M, K], coefficient (count) first so that the shift is contiguous
        b = -torch.expm1(-qb[:, None, :, c] * t[:, :, None])                        # [R, M, K]
        moved = state * b
        state -= moved
        state[1:] += moved[:-1]
        return state

    # pass 1: the product polynomial (counts 0..k-1) of each block
    state = torch.zeros(k, r_rows, m, blocks, dtype=torch.float64, device=dev)
    state[0] = 1
    for c in range(chunk):
        state = step(state, c)
    # carries: the product polynomial of all earlier blocks
    carry = torch.zeros(r_rows, m, k, dtype=torch.float64, device=dev)
    carry[..., 0] = 1
    carries = [carry]
    for blk in range(blocks - 1):
        carry = _polymul(carry, state[:, :, :, blk].movedim(0, -1))
        carries.append(carry)
    # pass 2: every prefix polynomial, starting each block from its carry; integrate as we go
    state = torch.stack(carries, 2).movedim(-1, 0).contiguous()                    # [k, R, M, K]
    qh = torch.zeros(r_rows, blocks, chunk, dtype=torch.float64, device=dev)
    for c in range(chunk):
        state = step(state, c)
        g = 1 - state.sum(0)                                                        # [R, M, K] P(N_H(t) >= k)
        r = r_pad[:, None, :, c]                                                    # [R, 1, K]
        f = (wt * r) * torch.exp(-r * t[:, :, None]) * (g - g_pad[:, None, :, c] * phi[:, :, None])
        qh[:, :, c] = f.sum(1)
    r0, g0 = r_after[:, 1:], g_inf[:, 1:]
    j = torch.arange(1, k + 1, device=dev, dtype=torch.float64)
    jl = j * lam[:, None]                                                           # [R, k]
    closed = g0 * (jl[:, None, :] / (r0[:, :, None] + jl[:, None, :])).prod(-1)    # int r e^{-rt} phi dt
    qh = qh.view(r_rows, -1)[:, :v] + closed                                        # Q(X in H_j), j = 1..V
    gap = torch.cat([qh.new_zeros(r_rows, 1), qh], 1) - _prefix(ps)
    return 1 - gap.max(-1).values.clamp_min(0)


def _log_t_min(k: int) -> float:
    # below t_min the integrand is < 2 t^{k+1} <= 2e-18
    return math.log(1e-18) / (k + 1)
