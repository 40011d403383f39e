"""Row entropy of softmax(logits), before any temperature, in bits (or nats).

H = -sum_x p(x) log p(x) with p = softmax(logits); Entropy Adaptive Decoding (Simonds 2025,
docs/algorithms.md section 5) measures it in bits on the raw logits, before temperature.

``entropy_reference`` is the PyTorch definition and the CPU path. ``entropy`` runs ``_entropy_kernel``:
one streaming pass keeps an online max m, s = sum e^(x - m) and t = sum e^(x - m) (x - m), so that
H_nats = log s - t / s (written with x - m, not x, so a peaked row does not lose H to cancellation).
The vocabulary of each row is split over several programs (``split``) so that a handful of rows still
fills the GPU; each program writes its partial (m, s, t), and the last one of its row to finish
(an atomic counter) merges them and writes H. Memory traffic: read rows * V elements, write rows.

Conventions: a -inf logit contributes nothing (0 log 0 = 0); a row of only -inf has entropy 0.
"""
import functools
import math

import torch

try:  # guarded: the reference path needs no triton
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only where triton is missing
    triton = None

UNITS = {"bits": 1.0 / math.log(2.0), "nats": 1.0}
MAX_SPLIT = 256  # partials per row merged by the last program (a power of two)


def _scale(unit: str) -> float:
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {sorted(UNITS)}, got {unit!r}")
    return UNITS[unit]


def entropy_reference(logits: torch.Tensor, unit: str = "bits") -> torch.Tensor:
    # logits: [rows, V] -> [rows] float32
    scale = _scale(unit)
    logp = torch.log_softmax(logits.float(), dim=-1)
    h_nats = -(logp.exp() * logp).nan_to_num(0.0).sum(-1)
    return h_nats * scale if unit != "nats" else h_nats


@functools.cache
def _kernel():
    """Build the Triton kernel on first use (not at import), so that the interpreter is chosen by
    TRITON_INTERPRET as it is then."""

    @triton.jit(do_not_specialize=["chunk"])
    def _entropy_kernel(
        x_ptr,        # [rows, V] logits, any float dtype, unit stride along V
        out_ptr,      # [rows] float32
        part_ptr,     # [rows, MAX_SPLIT, 3] float32 partial (m, s, t), used when SPLIT
        count_ptr,    # [rows] int32 zeros: programs of the row that have finished, used when SPLIT
        V, stride_x, chunk, scale,
        SPLIT: tl.constexpr, BLOCK: tl.constexpr, NCP: tl.constexpr,
    ):
        row = tl.program_id(0).to(tl.int64)
        part = tl.program_id(1)
        nparts = tl.num_programs(1)
        base = x_ptr + row * stride_x
        lo = part * chunk
        hi = tl.minimum(lo + chunk, V)
        offs0 = tl.arange(0, BLOCK)
        m = tl.full([], float("-inf"), tl.float32)
        s = tl.zeros([], tl.float32)
        t = tl.zeros([], tl.float32)
        for start in range(lo, hi, BLOCK):  # read BLOCK elements per step
            offs = start + offs0
            x = tl.load(base + offs, mask=offs < hi, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, 0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m - m_safe)                              # 0 while m is still -inf
            d_old = tl.where(m == float("-inf"), 0.0, m - m_safe)
            e = tl.exp(x - m_safe)                                  # 0 on -inf lanes
            d = tl.where(x == float("-inf"), 0.0, x - m_safe)
            t = alpha * (t + s * d_old) + tl.sum(e * d, 0)
            s = s * alpha + tl.sum(e, 0)
            m = m_new
        if SPLIT:
            pp = part_ptr + (row * NCP + part) * 3
            tl.store(pp, m)
            tl.store(pp + 1, s)
            tl.store(pp + 2, t)
            done = tl.atomic_add(count_ptr + row, 1, sem="acq_rel")
            if done == nparts - 1:  # the last program of this row merges the partials
                j = tl.arange(0, NCP)
                pj = part_ptr + (row * NCP + j) * 3
                ok = j < nparts
                mj = tl.load(pj, mask=ok, other=float("-inf"), cache_modifier=".cg")
                sj = tl.load(pj + 1, mask=ok, other=0.0, cache_modifier=".cg")
                tj = tl.load(pj + 2, mask=ok, other=0.0, cache_modifier=".cg")
                m = tl.max(mj, 0)
                m_safe = tl.where(m == float("-inf"), 0.0, m)
                a = tl.exp(mj - m_safe)
                dj = tl.where(mj == float("-inf"), 0.0, mj - m_safe)
                s = tl.sum(sj * a, 0)
                t = tl.sum(a * (tj + sj * dj), 0)
                s_safe = tl.where(s > 0, s, 1.0)
                h = tl.where(s > 0, tl.log(s_safe) - t / s_safe, 0.0)
                tl.store(out_ptr + row, h * scale)
                tl.store(count_ptr + row, 0)
        else:
            s_safe = tl.where(s > 0, s, 1.0)
            h = tl.where(s > 0, tl.log(s_safe) - t / s_safe, 0.0)
            tl.store(out_ptr + row, h * scale)

    return _entropy_kernel


@functools.lru_cache(maxsize=None)
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _auto_split(rows: int, V: int, block: int, device: torch.device) -> int:
    sms = _num_sms(device.index if device.index is not None else torch.cuda.current_device()) if device.type == "cuda" else 4
    return max(1, min(MAX_SPLIT, triton.cdiv(V, block), triton.cdiv(4 * sms, rows)))


def entropy(logits: torch.Tensor, unit: str = "bits", *, split: int | None = None, block: int | None = None) -> torch.Tensor:
    """Triton entropy of softmax(logits) per row: [rows, V] -> [rows] float32 (see module docstring).

    split: programs per row (None: enough to give every SM about four programs); block: elements per
    load step (None: 2048 on the GPU, up to 16384 in the interpreter, which pays per operation). Both only change speed, not the result
    beyond float32 rounding.
    """
    if triton is None:
        raise RuntimeError("triton is not installed: use entropy_reference")
    scale = _scale(unit)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point [rows, V] tensor, got {getattr(logits, 'shape', type(logits))}")
    rows, V = logits.shape
    if V == 0:
        raise ValueError("logits has an empty vocabulary (V = 0)")
    out = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows == 0:
        return out
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    block = block or (2048 if logits.is_cuda else max(16, min(16384, triton.next_power_of_2(V))))
    if block & (block - 1) or not 16 <= block <= 16384:
        raise ValueError(f"block must be a power of two in [16, 16384], got {block}")
    split = split or _auto_split(rows, V, block, logits.device)
    if not 1 <= split <= MAX_SPLIT:
        raise ValueError(f"split must be in [1, {MAX_SPLIT}], got {split}")
    chunk = triton.cdiv(triton.cdiv(V, split), block) * block
    split = triton.cdiv(V, chunk)
    if split > 1:
        part = torch.empty(rows, MAX_SPLIT, 3, dtype=torch.float32, device=logits.device)
        count = torch.zeros(rows, dtype=torch.int32, device=logits.device)
    else:
        part = count = out
    _kernel()[(rows, split)](
        logits, out, part, count, V, logits.stride(0), chunk, scale,
        SPLIT=split > 1, BLOCK=block, NCP=MAX_SPLIT, num_warps=8 if block >= 2048 else 4, enable_fp_fusion=True,
    )
    return out
