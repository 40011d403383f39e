"""Per-draft selection step of the OT-optimal verifier's race (verification/optimal.py).

Given the precomputed race of a row (interval lengths, own time mass, pool entries) and k drafts with
three uniforms each, every draft draws the interval its race time falls in, and the draft with the
earliest time wins:

    v = u1 * ell_j                              # j: the draft's rank, ell_j = q(draft)
    if v < own_j or j has no pool:  interval = j
    else:  e = the pool entry of j holding cumulative mass base_j + (v - own_j)   (binary search,
           clamped to j's entries [first_j, last_j]); n = its slot;
           interval = left_n if u2 * (xs_n + xd_n) < xs_n else right_n
    winner = smallest interval; ties (same interval: uniform times) by the smallest u3, then draw order

Times inside an interval are uniform, so comparing (interval, u3) lexicographically is the same race.
Cost: O(k log V) per row, one program per row in the Triton kernel (the torch reference launches ~20
small ops). ``optimal_select_reference`` is the definition and the CPU path; ``optimal_select`` runs
the Triton kernel (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1) and agrees bit for bit.

Measured (H100, torch 2.11, triton 3.6, 16 rows, k = 4, do_bench medians; bench/optimal_cost.py):
the selection takes 0.59-0.69 ms as torch ops and 0.074-0.096 ms as this kernel for V = 8192-151936
(bit-exact agreement on every draw checked). The step is launch-bound, not bandwidth-bound: it reads
~(10 + log2 4V) values per draft. The race's build (sort, scans, pools; torch ops) costs far more
(4-19 ms for those 16 rows, before the scatter-contention fix) and is where a fused kernel would pay.
"""
from __future__ import annotations

import functools
import os

import torch


def optimal_select_reference(ranks, u, ell, own, first, last, base, cum, left, right, xs, xd) -> torch.Tensor:
    # ranks: [N, k] long; u: [N, k, 3] f64; ell, own, base: [N, V] f64; first, last: [N, V] long
    # cum: [N, 2M] f64; left, right: [N, M] long; xs, xd: [N, M] f64  ->  [N] long winner index
    M = left.shape[1]
    u1, u2, u3 = u.unbind(-1)
    e, o = ell.gather(1, ranks), own.gather(1, ranks)
    f, la, bs = first.gather(1, ranks), last.gather(1, ranks), base.gather(1, ranks)
    v = u1 * e
    in_pool = (la >= 0) & (v >= o)
    t = bs + (v - o)
    idx = torch.searchsorted(cum, t, right=True)
    idx = torch.maximum(torch.minimum(idx, la), f)
    idx = torch.where(in_pool, idx, torch.zeros_like(idx))
    n = torch.where(idx >= M, idx - M, idx)
    a, c = xs.gather(1, n), xd.gather(1, n)
    to_left = u2 * (a + c) < a
    interval = torch.where(in_pool, torch.where(to_left, left.gather(1, n), right.gather(1, n)), ranks)
    first_iv = interval.min(-1, keepdim=True).values
    key = torch.where(interval == first_iv, u3, torch.full_like(u3, 2.0))
    return key.argmin(-1)


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    # Reductions go through tl.reduce with our own combine function: tl.min is a @jit function of
    # triton's standard library and stays compiled-only if triton was imported before TRITON_INTERPRET
    # was set. Both are built here, on first use, so the interpreter is honoured; the kernel body looks
    # the helper up among this module's globals (compiler and interpreter alike), hence the binding.
    @triton.jit
    def _min_combine(a, b):
        return tl.minimum(a, b)

    globals()["_min_combine"] = _min_combine

    @triton.jit(do_not_specialize=["V", "M2"])
    def _optimal_select_kernel(
        ranks_ptr,   # [N, K] int64
        u_ptr,       # [N, K, 3] float64
        ell_ptr, own_ptr, base_ptr,  # [N, V] float64
        first_ptr, last_ptr,         # [N, V] int64
        cum_ptr,     # [N, 2M] float64
        left_ptr, right_ptr,         # [N, M] int64
        xs_ptr, xd_ptr,              # [N, M] float64
        out_ptr,     # [N] int64
        K, V, M2,
        BLOCK_K: tl.constexpr, N_ITER: tl.constexpr,
    ):
        # read ~(10 + log2(2M)) values per draft; write 1 value per row
        row = tl.program_id(0).to(tl.int64)
        M = M2 // 2
        lane = tl.arange(0, BLOCK_K)
        lmask = lane < K
        j = tl.load(ranks_ptr + row * K + lane, mask=lmask, other=0)
        u1 = tl.load(u_ptr + row * K * 3 + lane * 3 + 0, mask=lmask, other=0.0)
        u2 = tl.load(u_ptr + row * K * 3 + lane * 3 + 1, mask=lmask, other=0.0)
        u3 = tl.load(u_ptr + row * K * 3 + lane * 3 + 2, mask=lmask, other=0.0)
        tok = row * V + j
        e = tl.load(ell_ptr + tok, mask=lmask, other=0.0)
        o = tl.load(own_ptr + tok, mask=lmask, other=0.0)
        bs = tl.load(base_ptr + tok, mask=lmask, other=0.0)
        f = tl.load(first_ptr + tok, mask=lmask, other=0)
        la = tl.load(last_ptr + tok, mask=lmask, other=-1)
        v = u1 * e
        in_pool = (la >= 0) & (v >= o) & lmask
        t = bs + (v - o)
        # first entry in [f, la] whose cumulative mass exceeds t (la if none): clamp(searchsorted_right)
        lo = tl.where(in_pool, f, 0)
        hi = tl.where(in_pool, la, 0)
        for _ in range(N_ITER):
            active = lo < hi
            midx = (lo + hi) // 2
            cv = tl.load(cum_ptr + row * M2 + midx, mask=active, other=0.0)
            go_left = cv > t
            hi = tl.where(active & go_left, midx, hi)
            lo = tl.where(active & (~go_left), midx + 1, lo)
        n = tl.where(lo >= M, lo - M, lo)
        slot = row * M + n
        a = tl.load(xs_ptr + slot, mask=in_pool, other=0.0)
        c = tl.load(xd_ptr + slot, mask=in_pool, other=0.0)
        li = tl.load(left_ptr + slot, mask=in_pool, other=0)
        ri = tl.load(right_ptr + slot, mask=in_pool, other=0)
        to_left = u2 * (a + c) < a
        interval = tl.where(in_pool, tl.where(to_left, li, ri), j)
        big = V + 1
        interval = tl.where(lmask, interval, big)
        first_iv = tl.reduce(interval, 0, _min_combine)  # noqa: F821
        key = tl.where((interval == first_iv) & lmask, u3, 2.0)
        kmin = tl.reduce(key, 0, _min_combine)  # noqa: F821
        win = tl.reduce(tl.where(key == kmin, lane, BLOCK_K), 0, _min_combine)  # noqa: F821
        tl.store(out_ptr + row, win.to(tl.int64))

    return _optimal_select_kernel


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def optimal_select(ranks, u, ell, own, first, last, base, cum, left, right, xs, xd) -> torch.Tensor:
    """Triton version of :func:`optimal_select_reference` (same arguments, same result bit for bit)."""
    N, K = ranks.shape
    V, M = ell.shape[1], left.shape[1]
    if u.shape != (N, K, 3) or u.dtype != torch.float64:
        raise ValueError(f"u must be a float64 [N, k, 3] = [{N}, {K}, 3] tensor, got {tuple(u.shape)} {u.dtype}")
    for name, t, width, dt in (("ell", ell, V, torch.float64), ("own", own, V, torch.float64),
                               ("base", base, V, torch.float64), ("first", first, V, torch.int64),
                               ("last", last, V, torch.int64), ("cum", cum, 2 * M, torch.float64),
                               ("left", left, M, torch.int64), ("right", right, M, torch.int64),
                               ("xs", xs, M, torch.float64), ("xd", xd, M, torch.float64)):
        if t.shape != (N, width) or t.dtype != dt:
            raise ValueError(f"{name} must be a {dt} [{N}, {width}] tensor, got {tuple(t.shape)} {t.dtype}")
    if ranks.dtype != torch.int64:
        raise ValueError(f"ranks must be int64, got {ranks.dtype}")
    if not (ranks.is_cuda or _interpreting()):
        raise ValueError("optimal_select needs CUDA tensors (or TRITON_INTERPRET=1); use optimal_select_reference")
    import triton

    out = torch.empty(N, dtype=torch.int64, device=ranks.device)
    if N == 0:
        return out
    args = [t.contiguous() for t in (ranks, u, ell, own, base, first, last, cum, left, right, xs, xd)]
    n_iter = max(1, int(2 * M).bit_length())
    _kernel()[(N,)](*args, out, K, V, 2 * M, BLOCK_K=triton.next_power_of_2(max(K, 2)), N_ITER=n_iter)
    return out

