"""Fused acceptance test + residual sampling for the lossless verifiers (p = target, q = draft).

Methods (docs/algorithms.md sections 1, 2, 4), all for k drafts x_1..x_k of one position per row:
- ``speculative`` (Leviathan et al. 2023; Chen et al. 2023): k = 1, accept x with probability
  min(1, p(x)/q(x)), else emit y ~ norm(max(0, p - q)).
- ``rrs`` with replacement (SpecInfer / MCSD): x_i i.i.d. ~ q; p_1 = p; accept x_i with probability
  min(1, p_i(x_i)/q(x_i)), else p_{i+1} = norm(max(0, p_i - q)); after k rejections emit y ~ p_{k+1}.
- ``rrs`` without replacement (MCSD, Jeon et al. RSD): x_i drawn without replacement, q_i = q with
  x_1..x_{i-1} removed and renormalised; p_{i+1} = norm(max(0, p_i - q_i)); drafted tokens are
  never emitted as the residual.
- ``kseq`` (SpecTr, Sun et al. 2023) for a given rho* (``rho``, >= 1): accept x_i with probability
  min(1, p(x_i)/(rho q(x_i))), the first accepted wins; otherwise y ~ norm(max(0, p - rho q)).

Noise is an input: ``u`` [rows, k] uniforms in [0, 1) for the acceptance tests and ``noise`` [rows, V]
exponential(1) draws E. The residual token is the exponential race argmax_y r(y) / E(y) (y is picked
with probability r(y) / sum r), computed on the fly: the residual is never written to memory.

Exact arithmetic, shared by the kernel and the ``*_reference`` functions so that both return the
same tokens for the same noise:
- p_i is kept unnormalised in closed form, R_i = max(0, p - C_i q) (float64), with C_1 = 0, S_1 = 1,
  C_{i+1} = C_i + S_i (with replacement) or C_i + S_i / D_i (without; D_i = 1 - sum_{j<i} q(x_j),
  drafted tokens set to 0), S_i = sum R_i. Acceptance of x_i: q(x_i) > 0 and
  u_i * (S_i * q(x_i)) < R_i(x_i) * D_i (D = 1 with replacement); for K-SEQ u_i * (rho * q(x_i)) < p(x_i).
  For k = 1 this is exactly the rule of fastdecode.verification.token.
- sums are taken in 2^-56 fixed point (int64), so they do not depend on the summation order;
- the residual score is float32(R) / E in IEEE float32 (E == 0 scores +inf, R == 0 scores 0), first
  index on ties; if the residual has no mass (sum <= 1e-12 V: p == q up to rounding) the token is
  argmax p / E instead (as fastdecode.verification.primitives.residual falls back to p).
The kernel is compiled without mul-add fusion so that float64 products round as in PyTorch.

Returns (tokens [rows] int64, index [rows] int64): index is the accepted draft's position (0-based,
draw order) or -1 when the token is a residual sample.

Kernel layout: one program per (row, vocabulary chunk). The decision needs only k gathers (and, for
RRS with k > 1, one full pass per rejection to get S_i, so RRS with k > 1 runs one program per row).
A rejected row's chunks each reduce their part of the residual (sum, best score, best index); the last
chunk to finish (atomic counter) merges them. Memory traffic of a rejected row: read p, q and E once
(k times p and q for RRS); an accepted row reads k values of p and q.
"""
import functools

import torch

try:  # guarded: the reference path needs no triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None

MODES = {"rrs": 0, "rrs_without_replacement": 1, "kseq": 2}
FIXED = 2.0 ** 56          # fixed-point scale of the residual sums
EMPTY_PER_TOKEN = 1e-12    # residual treated as empty below this mass per vocabulary entry
MAX_SPLIT = 256


# ---------------------------------------------------------------------------------------------
# PyTorch references (also the CPU path)
# ---------------------------------------------------------------------------------------------
def _fixed_sum(r: torch.Tensor) -> torch.Tensor:
    # r: [N, V] float64 >= 0 -> [N] int64: sum of r in units of 2^-56, independent of the order
    return (r * FIXED).long().sum(-1)


def _empty_fixed(V: int) -> int:
    """A residual whose fixed-point sum is <= this is treated as empty."""
    return int(EMPTY_PER_TOKEN * V * FIXED)


def _sample_residual(p: torch.Tensor, r: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    # p: [N, V], r: [N, V] float64 residual weights, noise: [N, V] float32 -> [N] long
    e = noise.float()
    safe = torch.where(e > 0, e, torch.ones_like(e))

    def race(w32):
        score = torch.where(e > 0, w32 / safe, torch.full_like(w32, float("inf")))
        return torch.where(w32 > 0, score, torch.zeros_like(w32)).argmax(-1)

    empty = _fixed_sum(r) <= _empty_fixed(p.shape[-1])
    return torch.where(empty, race(p.float()), race(r.float()))


def _reference(p, q, drafts, u, noise, mode: int, rho=None):
    N, V = p.shape
    K = drafts.shape[1]
    p64, q64 = p.double(), q.double()
    x = drafts.long().clamp(0, V - 1)
    px, qx = p64.gather(1, x), q64.gather(1, x)  # [N, K]
    u = u.double().reshape(N, K)
    C = rho.double().reshape(N).clone() if mode == 2 else torch.zeros(N, dtype=torch.float64, device=p.device)
    S = torch.ones(N, dtype=torch.float64, device=p.device)
    D = torch.ones(N, dtype=torch.float64, device=p.device)
    index = torch.full((N,), -1, dtype=torch.long, device=p.device)
    active = torch.ones(N, dtype=torch.bool, device=p.device)
    drafted = torch.zeros(N, V, dtype=torch.bool, device=p.device)

    def residual():
        r = (p64 - C[:, None] * q64).clamp_min(0)
        return r.masked_fill(drafted, 0.0) if mode == 1 else r

    for i in range(K):
        if mode == 2:
            ok = (qx[:, i] > 0) & (u[:, i] * (C * qx[:, i]) < px[:, i])
        else:
            rx = (px[:, i] - C * qx[:, i]).clamp_min(0)
            if mode == 1:
                rx = torch.where((x[:, :i] == x[:, i : i + 1]).any(1), torch.zeros_like(rx), rx)
            ok = (qx[:, i] > 0) & (u[:, i] * (S * qx[:, i]) < rx * D)
        ok &= active
        index = torch.where(ok, i, index)
        active &= ~ok
        if mode == 2:
            continue
        C = torch.where(active, C + (S / D if mode == 1 else S), C)
        if mode == 1:
            D = torch.where(active, D - qx[:, i], D)
            drafted[torch.arange(N, device=p.device), x[:, i]] = True
        if i + 1 < K:
            S = torch.where(active, _fixed_sum(residual()).double() / FIXED, S)
    res = _sample_residual(p, residual(), noise)
    accepted_token = x.gather(1, index.clamp_min(0)[:, None])[:, 0]
    return torch.where(index >= 0, accepted_token, res), index


def verify_rrs_reference(p, q, drafts, u, noise, replacement: bool = True):
    """RRS with (default) or without replacement; p, q: [N, V]; drafts, u: [N, k]; noise: [N, V]."""
    _check(p, q, drafts, u, noise)
    return _reference(p, q, drafts, u, noise, 0 if replacement else 1)


def verify_speculative_reference(p, q, drafts, u, noise):
    """Single-draft speculative sampling; drafts: [N, 1] (or [N]); u: [N] (or [N, 1])."""
    drafts, u = _single(drafts, u, p.shape[0])
    _check(p, q, drafts, u, noise)
    return _reference(p, q, drafts, u, noise, 0)


def verify_kseq_reference(p, q, drafts, u, noise, rho):
    """K-SEQ with a given rho* [N] (>= 1); drafts, u: [N, k]."""
    _check(p, q, drafts, u, noise, rho)
    return _reference(p, q, drafts, u, noise, 2, rho)


# ---------------------------------------------------------------------------------------------
# Triton kernel
# ---------------------------------------------------------------------------------------------
@functools.cache
def _kernel():
    """Build the Triton kernel on first use (not at import), so that the interpreter is chosen by
    TRITON_INTERPRET as it is then."""

    @triton.jit
    def _residual_block(p_ptr, q_ptr, d_ptr, offs, ok, C, V, n_drafted):
        """R = max(0, p - C q) in float64 on one block, the first n_drafted drafts zeroed."""
        p = tl.load(p_ptr + offs, mask=ok, other=0.0).to(tl.float64)
        q = tl.load(q_ptr + offs, mask=ok, other=0.0).to(tl.float64)
        r = tl.maximum(p - C * q, 0.0)
        for j in range(0, n_drafted):
            xj = tl.minimum(tl.maximum(tl.load(d_ptr + j).to(tl.int32), 0), V - 1)
            r = tl.where(offs == xj, 0.0, r)
        return tl.where(ok, r, 0.0), p

    @triton.jit
    def _race_update(w32, e, ok, offs, best, best_i):
        """Per-lane exponential race: keep the first lane-wise maximum of w / E."""
        score = tl.where(e > 0, tl.math.div_rn(w32, tl.where(e > 0, e, 1.0)), float("inf"))
        score = tl.where(w32 > 0, score, 0.0)
        score = tl.where(ok, score, -1.0)
        upd = score > best
        return tl.where(upd, score, best), tl.where(upd, offs, best_i)

    @triton.jit(do_not_specialize=["K", "chunk", "mode", "empty_fixed"])
    def _verify_kernel(
        p_ptr, q_ptr,      # [N, V] target / draft probabilities, unit stride along V
        d_ptr,             # [N, K] int drafts
        u_ptr,             # [N, K] float64 uniforms
        e_ptr,             # [N, V] float32 exponential noise
        rho_ptr,           # [N] float64 (K-SEQ only)
        tok_ptr, idx_ptr,  # [N] int64 outputs
        part_i_ptr,        # [N, MAX_SPLIT, 3] int64 partials (sum, arg residual, arg p)
        part_f_ptr,        # [N, MAX_SPLIT, 2] float32 partials (best residual score, best p score)
        count_ptr,         # [N] int32 zeros
        V, K, chunk, mode, empty_fixed,   # empty_fixed: the empty-residual mass in fixed point
        stride_p, stride_q, stride_d, stride_u, stride_e,
        SPLIT: tl.constexpr, BLOCK: tl.constexpr, NCP: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        part = tl.program_id(1)
        nparts = tl.num_programs(1)
        prow = p_ptr + row * stride_p
        qrow = q_ptr + row * stride_q
        drow = d_ptr + row * stride_d
        urow = u_ptr + row * stride_u
        erow = e_ptr + row * stride_e
        offs0 = tl.arange(0, BLOCK)

        # ---- decisions: k gathers (RRS with k > 1: one pass per rejection for S_i) ----
        C = tl.zeros([], tl.float64)
        if mode == 2:
            C = tl.load(rho_ptr + row).to(tl.float64)
        S = tl.full([], 1.0, tl.float64)
        D = tl.full([], 1.0, tl.float64)
        acc = tl.full([], -1, tl.int32)
        i = tl.zeros([], tl.int32)
        while (i < K) & (acc < 0):
            x = tl.minimum(tl.maximum(tl.load(drow + i).to(tl.int32), 0), V - 1)
            px = tl.load(prow + x).to(tl.float64)
            qx = tl.load(qrow + x).to(tl.float64)
            u = tl.load(urow + i).to(tl.float64)
            if mode == 2:
                ok = (qx > 0) & (u * (C * qx) < px)
            else:
                rx = tl.maximum(px - C * qx, 0.0)
                if mode == 1:
                    for j in range(0, i):
                        xj = tl.minimum(tl.maximum(tl.load(drow + j).to(tl.int32), 0), V - 1)
                        rx = tl.where(xj == x, 0.0, rx)
                ok = (qx > 0) & (u * (S * qx) < rx * D)
            if ok:
                acc = i
            elif mode != 2:
                if mode == 1:
                    C = C + S / D
                    D = D - qx
                else:
                    C = C + S
                if i + 1 < K:  # S_{i+1} = sum R_{i+1}, the normaliser of the next p_i
                    ssum = tl.zeros([BLOCK], tl.int64)
                    for start in range(0, V, BLOCK):
                        offs = start + offs0
                        r, _p = _residual_block(prow, qrow, drow, offs, offs < V, C, V, tl.where(mode == 1, i + 1, 0))
                        ssum += (r * 72057594037927936.0).to(tl.int64)
                    S = tl.sum(ssum, 0).to(tl.float64) / 72057594037927936.0
            i += 1

        if acc >= 0:
            if part == 0:
                tl.store(tok_ptr + row, tl.load(drow + acc).to(tl.int64))
                tl.store(idx_ptr + row, acc.to(tl.int64))
        else:
            # ---- residual race on this program's chunk of the vocabulary ----
            lo = part * chunk
            hi = tl.minimum(lo + chunk, V)
            ssum = tl.zeros([BLOCK], tl.int64)
            best_r = tl.full([BLOCK], -2.0, tl.float32)
            arg_r = tl.zeros([BLOCK], tl.int32)
            best_p = tl.full([BLOCK], -2.0, tl.float32)
            arg_p = tl.zeros([BLOCK], tl.int32)
            for start in range(lo, hi, BLOCK):  # read p, q, E once
                offs = start + offs0
                ok = offs < hi
                r, p = _residual_block(prow, qrow, drow, offs, ok, C, V, tl.where(mode == 1, K, 0))
                ssum += (r * 72057594037927936.0).to(tl.int64)
                e = tl.load(erow + offs, mask=ok, other=1.0).to(tl.float32)
                best_r, arg_r = _race_update(r.to(tl.float32), e, ok, offs, best_r, arg_r)
                best_p, arg_p = _race_update(p.to(tl.float32), e, ok, offs, best_p, arg_p)
            total = tl.sum(ssum, 0)
            top_r = tl.max(best_r, 0)
            top_p = tl.max(best_p, 0)
            a_r = tl.min(tl.where(best_r == top_r, arg_r, 2147483647), 0)
            a_p = tl.min(tl.where(best_p == top_p, arg_p, 2147483647), 0)
            last = nparts == 1
            if SPLIT:
                pi = part_i_ptr + (row * NCP + part) * 3
                pf = part_f_ptr + (row * NCP + part) * 2
                tl.store(pi, total)
                tl.store(pi + 1, a_r.to(tl.int64))
                tl.store(pi + 2, a_p.to(tl.int64))
                tl.store(pf, top_r)
                tl.store(pf + 1, top_p)
                done = tl.atomic_add(count_ptr + row, 1, sem="acq_rel")
                last = done == nparts - 1
                if last:  # merge the chunks: first index among the best scores
                    j = tl.arange(0, NCP)
                    okj = j < nparts
                    pj = part_i_ptr + (row * NCP + j) * 3
                    fj = part_f_ptr + (row * NCP + j) * 2
                    total = tl.sum(tl.load(pj, mask=okj, other=0, cache_modifier=".cg"), 0)
                    ar = tl.load(pj + 1, mask=okj, other=2147483647, cache_modifier=".cg")
                    ap = tl.load(pj + 2, mask=okj, other=2147483647, cache_modifier=".cg")
                    sr = tl.load(fj, mask=okj, other=-3.0, cache_modifier=".cg")
                    sp = tl.load(fj + 1, mask=okj, other=-3.0, cache_modifier=".cg")
                    a_r = tl.min(tl.where(sr == tl.max(sr, 0), ar, 2147483647), 0).to(tl.int32)
                    a_p = tl.min(tl.where(sp == tl.max(sp, 0), ap, 2147483647), 0).to(tl.int32)
                    tl.store(count_ptr + row, 0)
            if last:
                empty = total <= empty_fixed
                tl.store(tok_ptr + row, tl.where(empty, a_p, a_r).to(tl.int64))
                tl.store(idx_ptr + row, tl.full([], -1, tl.int64))

    # the kernel body looks its helpers up among this module's globals (compiler and interpreter alike)
    globals().update(_residual_block=_residual_block, _race_update=_race_update)
    return _verify_kernel


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _single(drafts, u, n):
    if isinstance(drafts, torch.Tensor) and drafts.dim() == 1:
        drafts = drafts[:, None]
    if isinstance(u, torch.Tensor) and u.dim() == 1:
        u = u[:, None]
    if isinstance(drafts, torch.Tensor) and drafts.dim() == 2 and drafts.shape[1] != 1:
        raise ValueError(f"speculative verification takes one draft per row: drafts must be [N, 1], got {tuple(drafts.shape)}")
    return drafts, u


def _check(p, q, drafts, u, noise, rho=None) -> None:
    for name, t in (("p", p), ("q", q)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point [N, V] tensor, got {getattr(t, 'shape', type(t))}")
    if p.shape != q.shape or p.shape[1] == 0:
        raise ValueError(f"p and q must have the same non-empty shape [N, V], got {tuple(p.shape)} and {tuple(q.shape)}")
    N, V = p.shape
    if not isinstance(drafts, torch.Tensor) or drafts.dim() != 2 or drafts.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"drafts must be an integer [N, k] tensor, got {getattr(drafts, 'shape', type(drafts))}")
    if drafts.shape[0] != N or drafts.shape[1] < 1:
        raise ValueError(f"drafts must be [N={N}, k >= 1], got {tuple(drafts.shape)}")
    if not isinstance(u, torch.Tensor) or u.shape != drafts.shape or not u.is_floating_point():
        raise ValueError(f"u must be a float tensor shaped like drafts {tuple(drafts.shape)}, got {getattr(u, 'shape', type(u))}")
    if not isinstance(noise, torch.Tensor) or noise.shape != p.shape or not noise.is_floating_point():
        raise ValueError(f"noise must be a float tensor [N, V] = {tuple(p.shape)}, got {getattr(noise, 'shape', type(noise))}")
    if rho is not None and (not isinstance(rho, torch.Tensor) or rho.shape != (N,)):
        raise ValueError(f"rho must be a tensor [N={N}], got {getattr(rho, 'shape', type(rho))}")
    devices = {t.device for t in (p, q, drafts, u, noise) + ((rho,) if rho is not None else ())}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")


def _launch(p, q, drafts, u, noise, mode: int, rho=None, *, split: int | None = None, block: int | None = None):
    N, V = p.shape
    K = drafts.shape[1]
    dev = p.device
    tokens = torch.empty(N, dtype=torch.int64, device=dev)
    index = torch.empty(N, dtype=torch.int64, device=dev)
    if N == 0:
        return tokens, index
    p, q, noise = (t if t.stride(1) == 1 else t.contiguous() for t in (p, q, noise))
    u = u.to(torch.float64).contiguous()
    drafts = drafts.contiguous()
    noise = noise if noise.dtype == torch.float32 else noise.float()
    rho = rho.to(torch.float64).contiguous() if rho is not None else u
    if split is None:
        sms = _num_sms(dev.index if dev.index is not None else torch.cuda.current_device()) if dev.type == "cuda" else 4
        split = triton.cdiv(4 * sms, N)
    if mode != 2 and K > 1:
        split = 1  # RRS passes over the whole row for every rejection: one program per row
    # GPU: 1024-element steps when the row is split over programs, 2048 (8 warps) for one program per row
    block = block or ((1024 if split > 1 else 2048) if dev.type == "cuda" else max(16, min(16384, triton.next_power_of_2(V))))
    if block & (block - 1) or not 16 <= block <= 16384:
        raise ValueError(f"block must be a power of two in [16, 16384], got {block}")
    split = max(1, min(split, MAX_SPLIT, triton.cdiv(V, block)))
    chunk = triton.cdiv(triton.cdiv(V, split), block) * block
    split = triton.cdiv(V, chunk)
    if split > 1:
        part_i = torch.empty(N, MAX_SPLIT, 3, dtype=torch.int64, device=dev)
        part_f = torch.empty(N, MAX_SPLIT, 2, dtype=torch.float32, device=dev)
        count = torch.zeros(N, dtype=torch.int32, device=dev)
    else:
        part_i, part_f, count = tokens, noise, tokens
    _kernel()[(N, split)](
        p, q, drafts, u, noise, rho, tokens, index, part_i, part_f, count,
        V, K, chunk, mode, _empty_fixed(V), p.stride(0), q.stride(0), drafts.stride(0), u.stride(0), noise.stride(0),
        SPLIT=split > 1, BLOCK=block, NCP=MAX_SPLIT, num_warps=8 if block >= 2048 else 4, enable_fp_fusion=False,
    )
    return tokens, index


def _need_triton():
    if triton is None:
        raise RuntimeError("triton is not installed: use the *_reference functions")


def verify_speculative(p, q, drafts, u, noise, **launch):
    """Fused single-draft speculative verification. p, q: [N, V]; drafts: [N, 1]; u: [N]; noise: [N, V].
    Returns (tokens [N], index [N]); index 0 = draft accepted, -1 = residual token."""
    _need_triton()
    drafts, u = _single(drafts, u, p.shape[0])
    _check(p, q, drafts, u, noise)
    return _launch(p, q, drafts, u, noise, MODES["rrs"], **launch)


def verify_rrs(p, q, drafts, u, noise, replacement: bool = True, **launch):
    """Fused recursive rejection sampling; drafts, u: [N, k] (draw order); see the module docstring."""
    _need_triton()
    _check(p, q, drafts, u, noise)
    return _launch(p, q, drafts, u, noise, MODES["rrs" if replacement else "rrs_without_replacement"], **launch)


def verify_kseq(p, q, drafts, u, noise, rho, **launch):
    """Fused K-SEQ verification with a given rho* [N] (>= 1); drafts, u: [N, k]."""
    _need_triton()
    _check(p, q, drafts, u, noise, rho)
    return _launch(p, q, drafts, u, noise, MODES["kseq"], rho, **launch)
