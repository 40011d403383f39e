"""One decode step of Lambda-shaped attention (LM-Infinite): one query against global + window keys.

Inputs per (batch, head), see ``docs/algorithms.md`` section 6 ("O(1)-memory decode kernel"):
- ``q`` [B, H, D]: the query rotated at its true position ``qpos``;
- ``q_far`` [B, H, D]: the same query rotated at position ``window`` (the distance limit L);
- ``k``, ``v`` [B, Hkv, m, D]: the cached keys (rotated at their true positions ``kpos`` [m]) and values,
  globals first (the layout of :class:`fastdecode.attention.lambda_cache.LambdaCache`);
- ``k_glob`` [B, Hkv, g, D]: the first g keys moved back to position 0 (pre-RoPE).

Score of column n: ``q_far . k_glob[n]`` if n < g, kpos[n] < num_global and qpos - kpos[n] >= L
(a global outside the window, at distance L); ``q . k[n]`` if 0 <= qpos - kpos[n] < L (true
distance); masked otherwise. Then one softmax over all columns and the weighted sum of values.
Grouped-query attention: head h reads kv head h // (H / Hkv).

``lambda_decode_reference`` is the PyTorch definition and the CPU path; ``lambda_decode`` launches the
Triton kernel (one program per (batch, head), an online softmax over blocks of BLOCK_N keys).
"""
from __future__ import annotations

import functools

import torch


def lambda_decode_reference(q: torch.Tensor, q_far: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            k_glob: torch.Tensor, kpos: torch.Tensor, qpos: torch.Tensor, window: int,
                            num_global: int, scaling: float) -> torch.Tensor:
    # q, q_far: [B, H, D]; k, v: [B, Hkv, m, D]; k_glob: [B, Hkv, g, D]; kpos: [m]; qpos: [1] -> [B, H, D]
    B, H, D = q.shape
    n_rep = H // k.shape[1]
    g = k_glob.shape[2]
    kk = k.repeat_interleave(n_rep, 1).float()
    kg = k_glob.repeat_interleave(n_rep, 1).float()
    vv = v.repeat_interleave(n_rep, 1).float()
    s_loc = torch.einsum("bhd,bhnd->bhn", q.float(), kk) * scaling  # [B, H, m]
    s_far = torch.einsum("bhd,bhnd->bhn", q_far.float(), kg) * scaling  # [B, H, g]
    dist = qpos.reshape(()) - kpos  # [m]
    local = (dist >= 0) & (dist < window)
    far = (kpos < num_global) & (dist >= window) & (torch.arange(kpos.shape[0], device=kpos.device) < g)
    s_far = torch.cat([s_far, s_loc.new_zeros(B, H, s_loc.shape[-1] - g)], -1)
    s = torch.where(far, s_far, torch.where(local, s_loc, torch.full_like(s_loc, float("-inf"))))
    p = torch.softmax(s, dim=-1)
    return torch.einsum("bhn,bhnd->bhd", p, vv).to(q.dtype)


@functools.lru_cache(maxsize=None)
def _kernel():
    """Build the Triton kernel on first use (so TRITON_INTERPRET set by a test is honoured)."""
    import triton
    import triton.language as tl

    @triton.jit(do_not_specialize=["m", "g"])
    def _lambda_decode_kernel(
        q_ptr, qf_ptr,  # [B, H, D] contiguous
        k_ptr, v_ptr,  # [B, Hkv, m, D] contiguous
        kg_ptr,  # [B, Hkv, g, D] contiguous
        kpos_ptr,  # [m] int64
        qpos_ptr,  # [1] int64
        out_ptr,  # [B, H, D] contiguous
        m, g, H, HKV, n_rep, window, num_global, scaling,
        D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = pid // H
        h = pid % H
        kvh = h // n_rep
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < D
        q = tl.load(q_ptr + pid * D + offs_d, mask=dmask, other=0.0).to(tl.float32)
        qf = tl.load(qf_ptr + pid * D + offs_d, mask=dmask, other=0.0).to(tl.float32)
        qpos = tl.load(qpos_ptr)
        kv_base = (b * HKV + kvh).to(tl.int64) * m * D
        g_base = (b * HKV + kvh).to(tl.int64) * g * D
        m_i = tl.max(tl.full([BLOCK_N], -1e30, tl.float32), axis=0)  # running max (finite: no inf - inf)
        l_i = tl.sum(tl.zeros([BLOCK_N], tl.float32), axis=0)  # running denominator
        acc = tl.zeros([BLOCK_D], tl.float32)
        for start in range(0, m, BLOCK_N):
            offs_n = start + tl.arange(0, BLOCK_N)
            nmask = offs_n < m
            kp = tl.load(kpos_ptr + offs_n, mask=nmask, other=0)
            tile = offs_n[:, None] * D + offs_d[None, :]
            tmask = nmask[:, None] & dmask[None, :]
            kt = tl.load(k_ptr + kv_base + tile, mask=tmask, other=0.0).to(tl.float32)
            s_loc = tl.sum(kt * q[None, :], axis=1) * scaling
            gmask = offs_n < g
            kgt = tl.load(kg_ptr + g_base + tile, mask=gmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
            s_far = tl.sum(kgt * qf[None, :], axis=1) * scaling
            dist = qpos - kp
            local = nmask & (dist >= 0) & (dist < window)
            far = gmask & (kp < num_global) & (dist >= window)
            s = tl.where(far, s_far, tl.where(local, s_loc, float("-inf")))
            m_new = tl.maximum(m_i, tl.max(s, axis=0))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new)
            vt = tl.load(v_ptr + kv_base + tile, mask=tmask, other=0.0).to(tl.float32)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            acc = acc * alpha + tl.sum(p[:, None] * vt, axis=0)
            m_i = m_new
        out = acc / l_i
        tl.store(out_ptr + pid * D + offs_d, out.to(out_ptr.dtype.element_ty), mask=dmask)

    return _lambda_decode_kernel


def lambda_decode(q: torch.Tensor, q_far: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_glob: torch.Tensor,
                  kpos: torch.Tensor, qpos: torch.Tensor, window: int, num_global: int, scaling: float,
                  block_n: int = 64) -> torch.Tensor:
    """Triton launch of the Lambda decode step; same arguments and result as :func:`lambda_decode_reference`."""
    import triton

    if q.dim() != 3 or q_far.shape != q.shape:
        raise ValueError(f"q and q_far must both be [B, H, D], got {tuple(q.shape)} and {tuple(q_far.shape)}")
    B, H, D = q.shape
    if k.dim() != 4 or k.shape[0] != B or k.shape[3] != D or v.shape != k.shape:
        raise ValueError(f"k and v must be [B, Hkv, m, D] matching q {tuple(q.shape)}, got {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    HKV, m = k.shape[1], k.shape[2]
    if H % HKV:
        raise ValueError(f"query heads ({H}) must be a multiple of key/value heads ({HKV})")
    if k_glob.dim() != 4 or k_glob.shape[:2] != k.shape[:2] or k_glob.shape[3] != D or k_glob.shape[2] > m:
        raise ValueError(f"k_glob must be [B, Hkv, g <= m, D] matching k, got {tuple(k_glob.shape)}")
    if kpos.shape != (m,):
        raise ValueError(f"kpos must be [m] = [{m}], got {tuple(kpos.shape)}")
    if m == 0:
        raise ValueError("lambda_decode needs at least one key (the query's own)")
    out = torch.empty_like(q)
    kg = k_glob.contiguous() if k_glob.shape[2] else k.new_zeros(B, HKV, 1, D)
    _kernel()[(B * H,)](
        q.contiguous(), q_far.contiguous(), k.contiguous(), v.contiguous(), kg,
        kpos.to(torch.int64).contiguous(), qpos.reshape(1).to(torch.int64), out,
        m, k_glob.shape[2], H, HKV, H // HKV, window, num_global, float(scaling),
        D=D, BLOCK_N=block_n, BLOCK_D=triton.next_power_of_2(D),
    )
    return out
