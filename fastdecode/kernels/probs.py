"""Logits -> probabilities with temperature, top-k, top-p and min-p (the distribution p or q).

``probs_reference`` is the PyTorch definition and the CPU path. Semantics (identical for p and q):
- temperature == 0: one-hot at the argmax (first index on ties, as ``torch.argmax`` and HF greedy).
- top_k > 0: keep the tokens whose scaled logit is >= the k-th largest (ties at the boundary kept).
- top_p < 1: keep the smallest set of most probable tokens whose mass reaches top_p (after top-k),
  i.e. token x is kept iff the mass of tokens strictly more probable than x is < top_p.
- top_h < 1 (reference only), before top-k as in HF: among the 100 most probable tokens, keep them in order
  while the cumulative entropy terms -p log p (their own softmax) stay within top_h times their entropy.
- the warpers after top-p (reference only; the kernel takes none), in HF's order, each on the row renormalised
  after the ones before it (ratios of kept tokens do not change under renormalisation), the most probable
  token always kept as HF keeps one (``min_tokens_to_keep``):
  - min_p > 0: keep x iff p(x) >= min_p * max p;
  - typical_p < 1 (locally typical sampling): rank tokens by |-log p(x) - H| (H: the row's entropy), keep the
    shortest run of that order whose mass reaches typical_p (the first token always);
  - epsilon_cutoff > 0: drop x where p(x) < epsilon_cutoff;
  - eta_cutoff > 0: drop x where p(x) < min(eta, sqrt(eta) * exp(-H)).
- the result is renormalised, float32.

``probs`` runs ``_probs_kernel``, one program per row, without sorting the vocabulary:
1. a pass computes x = logit * float32(1 / temperature) (what torch on CUDA computes for
   ``logits / temperature``; on the CPU torch divides, which can differ in the last bit),
   the running max m, s = sum e^(x - m) and the range of the row's order keys (the float bits
   mapped to int32 so that integer order is float order);
2. top-k: the k-th largest x is found exactly by a multi-way bisection over the int32 keys: each pass
   counts, for NT thresholds splitting the current bracket [lo, hi), how many keys are >= each one
   and keeps the sub-bracket where the count crosses k. It stops when count(>= lo) == k or the
   bracket holds one key value, so the kept set is {key >= lo}, ties at the k-th value included;
3. top-p: the same search on the mass G(t) = sum of e^(x - m) over keys >= t: the kept set is
   {x >= v*}, v* the largest value with G(v*) >= top_p * G(top-k threshold). The search starts at
   m + log((1 - top_p) Z / V) - 1 (tokens below are always dropped: the mass of all tokens less
   probable than (1 - top_p) / V is < 1 - top_p) and stops when its bracket holds one element;
4. a pass writes e^(x - m) / G(kept) for kept tokens and 0 elsewhere.
Cost: 2 + (top-k passes + 1 for the mass at the top-k threshold) + (top-p passes) reads of the row
(a handful of search passes each at 152k; after the first they hit L2) and one write. One program
per row: a few rows leave most of a large GPU idle (see bench/kernels.py for the measured numbers). The kept set equals the reference's except when float32 rounding
of the cumulative mass decides a boundary token (the reference sums in sorted order, the kernel per
lane), and at exact ties of probability on the top-p boundary, where the reference keeps part of the
tie group (in sort order) and the kernel keeps all of it.
"""
import functools

import torch

try:  # guarded: the reference path needs no triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None

NT = 16  # thresholds per search pass: each pass narrows the key bracket about 16-fold


def probs_reference(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                    min_p: float = 0.0, typical_p: float = 1.0, epsilon_cutoff: float = 0.0,
                    eta_cutoff: float = 0.0, top_h: float = 1.0) -> torch.Tensor:
    # logits: [rows, V] -> [rows, V] float32
    if temperature == 0:
        out = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
        return out.scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    x = scaled_logits(logits, temperature, top_k, top_h)
    probs = torch.softmax(x, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = torch.sort(probs, dim=-1, descending=True)
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass strictly ahead in the order
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, idx, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    if min_p > 0.0:
        probs = _kept(probs, probs < min_p * probs.amax(-1, keepdim=True))
    if typical_p < 1.0:
        lp = probs.log()
        shifted = (-lp - _entropy(probs, lp)).abs()                      # +inf where p = 0: ranked last
        order_s, order = torch.sort(shifted, dim=-1)
        mass = probs.gather(-1, order).cumsum(-1)
        last = (mass < typical_p).sum(-1, keepdim=True).clamp(max=probs.shape[-1] - 1)
        drop_sorted = order_s > order_s.gather(-1, last)
        drop_sorted[..., :1] = False
        probs = probs.masked_fill(torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted), 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    if epsilon_cutoff > 0.0:
        probs = _kept(probs, probs < epsilon_cutoff)
    if eta_cutoff > 0.0:
        eta = torch.clamp(eta_cutoff ** 0.5 * torch.exp(-_entropy(probs, probs.log())), max=eta_cutoff)
        probs = _kept(probs, probs < eta)
    return probs


def scaled_logits(logits: torch.Tensor, temperature: float, top_k: int = 0, top_h: float = 1.0) -> torch.Tensor:
    """float32 ``logits`` / temperature (> 0) with the tokens top-h and top-k drop set to -inf, in HF's order."""
    x = logits.float() / temperature
    if top_h < 1.0:
        x = _top_h(x, top_h)
    if 0 < top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    return x


TOP_H_CANDIDATES = 100   # HF's top_n: the top-h rule looks at this many most probable tokens


def _top_h(x: torch.Tensor, top_h: float) -> torch.Tensor:
    """HF's top-h warper on scaled logits: among the TOP_H_CANDIDATES largest (their own softmax), keep tokens in
    order of probability while the cumulative entropy terms stay within top_h times their entropy (the first
    always); the rest -inf. The same operations as HF's, so the same kept set."""
    n = min(TOP_H_CANDIDATES, x.shape[-1])
    top, idx = torch.topk(x, n, dim=-1, largest=True, sorted=True)
    dist = torch.distributions.Categorical(logits=top)
    p = dist.probs
    keep_top = torch.cumsum(-p * torch.log(p), dim=-1) <= (dist.entropy() * top_h).unsqueeze(-1)
    keep_top[:, 0] = True
    keep = torch.zeros_like(x, dtype=torch.bool).scatter_(1, idx, keep_top)
    return x.masked_fill(~keep, float("-inf"))


def _entropy(probs: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) per row [rows, 1] of ``probs`` with their logs ``lp`` (0 log 0 = 0)."""
    return -(probs * lp).nansum(-1, keepdim=True)


def _kept(probs: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
    """``probs`` with the ``drop`` entries zeroed, except each row's most probable token, renormalised."""
    drop = drop & (probs < probs.amax(-1, keepdim=True))
    probs = probs.masked_fill(drop, 0.0)
    return probs / probs.sum(-1, keepdim=True)


@functools.cache
def _kernel():
    """Build the Triton kernel on first use (not at import), so that the interpreter is chosen by
    TRITON_INTERPRET as it is then."""

    @triton.jit
    def _order_key(x):
        """float32 -> int32 with the same order (-0.0 maps to +0.0's key)."""
        bits = x.to(tl.int32, bitcast=True)
        bits = tl.where(bits == -2147483648, 0, bits)
        return tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)

    @triton.jit
    def _search_pass(row_ptr, V, inv_t, m_safe, lo, hi, target, by_mass, BLOCK_S: tl.constexpr, NT: tl.constexpr):
        """One pass: counts and masses at NT thresholds in [lo, hi); returns the sub-bracket
        [t_j, t_j+1) with the largest t_j whose count (or mass) still reaches ``target``."""
        jj = tl.arange(0, NT)
        thr64 = lo + ((hi - lo) * jj.to(tl.int64)) // NT
        thr = thr64.to(tl.int32)
        cnt = tl.zeros([BLOCK_S, NT], dtype=tl.int32)
        mass = tl.zeros([BLOCK_S, NT], dtype=tl.float32)
        offs0 = tl.arange(0, BLOCK_S)
        for start in range(0, V, BLOCK_S):  # read BLOCK_S elements, compare each with NT thresholds
            offs = start + offs0
            ok = offs < V
            z = tl.load(row_ptr + offs, mask=ok, other=float("-inf")).to(tl.float32)
            x = z * inv_t
            ge = (_order_key(x)[:, None] >= thr[None, :]) & ok[:, None]
            cnt += ge.to(tl.int32)
            if by_mass:
                e = tl.exp(x - m_safe)
                mass += tl.where(ge, e[:, None], 0.0)
        c = tl.sum(cnt, 0)
        g = tl.sum(mass, 0)
        reach = tl.where(by_mass, g >= target, c.to(tl.float32) >= target)
        js = tl.max(tl.where(reach | (jj == 0), jj, 0), 0)
        new_lo = tl.sum(tl.where(jj == js, thr64, 0), 0)
        c_lo = tl.sum(tl.where(jj == js, c, 0), 0)
        g_lo = tl.sum(tl.where(jj == js, g, 0.0), 0)
        nxt = js + 1 < NT
        new_hi = tl.where(nxt, tl.sum(tl.where(jj == js + 1, thr64, 0), 0), hi)
        c_hi = tl.sum(tl.where(jj == js + 1, c, 0), 0)  # 0 when js is the last threshold: see caller
        return new_lo, new_hi, c_lo, g_lo, c_hi, nxt

    @triton.jit(do_not_specialize=["top_k", "use_top_k", "use_top_p", "greedy"])
    def _probs_kernel(
        x_ptr,     # [rows, V] logits, any float dtype, unit stride along V
        out_ptr,   # [rows, V] float32
        V, stride_x, stride_o,
        inv_t, top_k, top_p,      # inv_t = float32(1 / temperature), as torch on CUDA divides by a scalar
        greedy, use_top_k, use_top_p,   # runtime flags (0/1): one compiled kernel for every setting
        BLOCK: tl.constexpr, BLOCK_S: tl.constexpr, NT: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        xrow = x_ptr + row * stride_x
        orow = out_ptr + row * stride_o
        offs0 = tl.arange(0, BLOCK)
        if greedy:
            best = tl.full([BLOCK], float("-inf"), tl.float32)
            best_i = tl.full([BLOCK], 2147483647, tl.int32)
            for start in range(0, V, BLOCK):  # per-lane running argmax, first index kept on ties
                offs = start + offs0
                ok = offs < V
                z = tl.load(xrow + offs, mask=ok, other=float("-inf")).to(tl.float32)
                upd = ok & ((z > best) | (best_i == 2147483647))
                best = tl.where(upd, z, best)
                best_i = tl.where(upd, offs, best_i)
            top = tl.max(best, 0)
            arg = tl.min(tl.where(best == top, best_i, 2147483647), 0)
            for start in range(0, V, BLOCK):  # write one-hot
                offs = start + offs0
                tl.store(orow + offs, tl.where(offs == arg, 1.0, 0.0), mask=offs < V)
        else:
            # pass 1: running max / sum-exp of x = z / T, and the key range
            m = tl.full([], float("-inf"), tl.float32)
            s = tl.zeros([], tl.float32)
            kmin = tl.full([BLOCK], 2147483647, tl.int32)
            kmax = tl.full([BLOCK], -2147483648, tl.int32)
            for start in range(0, V, BLOCK):
                offs = start + offs0
                ok = offs < V
                z = tl.load(xrow + offs, mask=ok, other=float("-inf")).to(tl.float32)
                x = z * inv_t
                m_new = tl.maximum(m, tl.max(x, 0))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe), 0)
                m = m_new
                key = _order_key(x)
                kmin = tl.where(ok, tl.minimum(kmin, key), kmin)
                kmax = tl.where(ok, tl.maximum(kmax, key), kmax)
            m_safe = tl.where(m == float("-inf"), 0.0, m)
            key_lo = tl.min(kmin, 0).to(tl.int64)
            key_hi = tl.max(kmax, 0).to(tl.int64) + 1
            # the search, one pass per loop iteration (a single call site keeps the compile short):
            # phase 0: top-k count search, invariant count(key >= lo) >= top_k > count(key >= hi);
            # phase 1: the mass at the top-k threshold; phase 2: set up top-p;
            # phase 3: top-p mass search, invariant G(lo) >= top_p * Z > G(hi); phase 4: done
            lo = key_lo
            hi = key_hi
            z_kept = s
            target = top_p * s
            c_lo = V + 1
            c_hi = tl.zeros([], tl.int32)
            phase = tl.where(use_top_k != 0, 0, tl.where(use_top_p != 0, 2, 4))
            while phase < 4:
                if phase == 2:
                    target = top_p * z_kept
                    bound = m_safe + tl.log(tl.maximum((1.0 - top_p) * z_kept / V, 1e-30)) - 1.0
                    lo = tl.maximum(lo, _order_key(bound).to(tl.int64))
                    hi = key_hi
                    c_lo = V + 1
                    c_hi = tl.zeros([], tl.int32)
                    phase = phase + 1
                goal = tl.where(phase == 0, top_k.to(tl.float32), tl.where(phase == 1, 0.0, target))
                new_lo, new_hi, n_lo, g_lo, c_nxt, nxt = _search_pass(
                    xrow, V, inv_t, m_safe, lo, tl.where(phase == 1, lo + 1, hi), goal, phase != 0, BLOCK_S, NT)
                if phase == 1:
                    z_kept = g_lo
                    phase = tl.where(use_top_p != 0, 2, 4)
                else:
                    c_hi = tl.where(nxt, c_nxt, c_hi)
                    lo = new_lo
                    hi = new_hi
                    c_lo = n_lo
                    if phase == 0:
                        if (hi - lo <= 1) | (c_lo == top_k):
                            phase = phase + 1
                    elif (hi - lo <= 1) | (c_lo - c_hi <= 1):
                        z_kept = g_lo
                        phase = phase + 1
            thr = lo.to(tl.int32)
            inv = tl.where(z_kept > 0, 1.0 / tl.where(z_kept > 0, z_kept, 1.0), 0.0)
            for start in range(0, V, BLOCK):  # write e^(x - m) / Z on kept tokens
                offs = start + offs0
                ok = offs < V
                z = tl.load(xrow + offs, mask=ok, other=float("-inf")).to(tl.float32)
                x = z * inv_t
                keep = _order_key(x) >= thr
                tl.store(orow + offs, tl.where(keep, tl.exp(x - m_safe) * inv, 0.0), mask=ok)

    # the kernel body looks its helpers up among this module's globals (compiler and interpreter alike)
    globals().update(_order_key=_order_key, _search_pass=_search_pass)
    return _probs_kernel


def _inverse_temperature(temperature: float) -> float:
    """float32(1 / float32(T)): torch on CUDA divides a float32 tensor by a scalar T this way."""
    if temperature == 0:
        return 1.0
    t32 = torch.tensor(float(temperature), dtype=torch.float32)
    return float(torch.tensor(1.0, dtype=torch.float32) / t32)


def _check(logits, temperature, top_k, top_p) -> None:
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point [rows, V] tensor, got {getattr(logits, 'shape', type(logits))}")
    if logits.shape[1] == 0:
        raise ValueError("logits has an empty vocabulary (V = 0)")
    if not (temperature >= 0 and temperature < float("inf")):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if int(top_k) != top_k or top_k < 0:
        raise ValueError(f"top_k must be an int >= 0 (0 disables it), got {top_k!r}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, *,
          block: int | None = None, search_block: int | None = None) -> torch.Tensor:
    """Triton version of :func:`probs_reference`: [rows, V] logits -> [rows, V] float32 probabilities.

    block / search_block: elements per step of the plain and the search passes (powers of two;
    None: 4096 (1024 for V <= 1024) and 1024 on the GPU, a few fixed sizes so that few variants get
    compiled; up to 16384 and 8192 in the interpreter, which pays per operation, not per element).
    """
    if triton is None:
        raise RuntimeError("triton is not installed: use probs_reference")
    _check(logits, temperature, top_k, top_p)
    rows, V = logits.shape
    out = torch.empty(rows, V, dtype=torch.float32, device=logits.device)
    if rows == 0:
        return out
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    # the interpreter (CPU) pays per operation, not per element: give it big blocks
    block = block or ((4096 if V > 1024 else 1024) if logits.is_cuda else max(16, min(16384, triton.next_power_of_2(V))))
    # GPU: a search step compares 1024 elements with 16 thresholds (128 registers, no spills at 16 warps)
    search_block = search_block or min(block, 1024 if logits.is_cuda else 8192)
    for name, b in (("block", block), ("search_block", search_block)):
        if b & (b - 1) or not 16 <= b <= 16384:
            raise ValueError(f"{name} must be a power of two in [16, 16384], got {b}")
    greedy = temperature == 0
    _kernel()[(rows,)](
        logits, out, V, logits.stride(0), out.stride(0),
        _inverse_temperature(temperature), int(top_k), float(top_p),
        int(greedy), int(0 < top_k < V), int(top_p < 1.0),
        BLOCK=block, BLOCK_S=search_block, NT=NT, num_warps=16 if search_block >= 1024 else 4, enable_fp_fusion=True,
    )
    return out
