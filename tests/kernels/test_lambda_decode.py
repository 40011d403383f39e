"""Lambda decode kernel vs its PyTorch reference (CPU, TRITON_INTERPRET=1), and the reference vs the
dense Lambda reference of fastdecode.attention (so the kernel computes Lambda attention, not just
'what the reference does')."""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported anywhere in this process

import pytest
import torch

from fastdecode.attention.lambda_mask import LambdaAttention, lambda_attention_reference
from fastdecode.attention.rope import apply_rope, move
from fastdecode.kernels.lambda_decode import lambda_decode, lambda_decode_reference

TOLS = {torch.float32: (1e-5, 1e-5), torch.float16: (2e-3, 2e-3), torch.bfloat16: (2e-2, 2e-2)}


def _inv_freq(d_rot: int) -> torch.Tensor:
    return 1.0 / (10000 ** (torch.arange(0, d_rot, 2, dtype=torch.float32) / d_rot))


def _case(B, H, HKV, D, m, qpos, window, n_global, dtype, seed=0):
    """Raw q, k, v for keys at the cache layout's positions, plus the kernel's inputs."""
    g = torch.Generator().manual_seed(seed)
    n_g = min(n_global, m)
    # cache layout: globals 0..n_g-1, then a contiguous run ending at qpos (the query's own key)
    kpos = torch.cat([torch.arange(n_g), torch.arange(qpos - (m - n_g) + 1, qpos + 1)])
    q_raw = torch.randn(B, H, 1, D, generator=g, dtype=torch.float64)
    k_raw = torch.randn(B, HKV, m, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, HKV, m, D, generator=g, dtype=torch.float64)
    inv_freq = _inv_freq(D)
    qp = torch.tensor([qpos])
    q = apply_rope(q_raw, qp, inv_freq)
    k = apply_rope(k_raw, kpos, inv_freq)
    q_far = move(q, qp, torch.tensor([window]), inv_freq)
    k_glob = move(k[:, :, :n_g], kpos[:n_g], torch.zeros(n_g, dtype=torch.long), inv_freq)
    cast = lambda x: x.to(dtype)  # noqa: E731
    return dict(q=cast(q[:, :, 0]), q_far=cast(q_far[:, :, 0]), k=cast(k), v=cast(v), k_glob=cast(k_glob),
                kpos=kpos, qpos=qp), (q_raw, k_raw, v, qp, kpos, inv_freq)


SHAPES = [  # (B, H, HKV, D, m, qpos, window, n_global)
    (1, 6, 6, 64, 1, 0, 256, 8),  # first token: only itself
    (1, 2, 2, 64, 37, 36, 64, 4),  # no eviction yet, all local
    (2, 6, 3, 64, 20, 500, 16, 4),  # GQA, globals far away (distance limit)
    (1, 3, 1, 48, 75, 1000, 67, 8),  # head_dim not a power of two, odd window
    (1, 4, 4, 32, 70, 70, 64, 8),  # some globals inside the window, some outside
    (1, 2, 2, 16, 130, 300, 128, 0),  # no globals: a plain sliding window
]


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_is_lambda_attention(shape):
    B, H, HKV, D, m, qpos, window, n_global = shape
    cfg = LambdaAttention(window=window, num_global=n_global)
    args, (q_raw, k_raw, v, qp, kpos, inv_freq) = _case(*shape, torch.float64)
    got = lambda_decode_reference(**args, window=window, num_global=n_global, scaling=D ** -0.5)
    want = lambda_attention_reference(q_raw, k_raw, v, qp, kpos, cfg, inv_freq.double(), D ** -0.5)[:, :, 0]
    # angles are float32 (as transformers computes them), hence not 1e-12
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_reference_detects_wrong_global_distance():
    """A broken variant (globals at their true distance instead of L) is told apart by the check above."""
    B, H, HKV, D, m, qpos, window, n_global = SHAPES[2]
    cfg = LambdaAttention(window=window, num_global=n_global)
    args, (q_raw, k_raw, v, qp, kpos, inv_freq) = _case(*SHAPES[2], torch.float64)
    args["q_far"] = args["q"]  # broken: no distance limit
    got = lambda_decode_reference(**args, window=window, num_global=n_global, scaling=D ** -0.5)
    want = lambda_attention_reference(q_raw, k_raw, v, qp, kpos, cfg, inv_freq.double(), D ** -0.5)[:, :, 0]
    assert (got - want).abs().max() > 1e-3


KERNEL_CASES = [(s, torch.float32) for s in SHAPES] + [(SHAPES[i], dt) for i in (2, 3) for dt in (torch.float16, torch.bfloat16)]


@pytest.mark.parametrize("shape,dtype", KERNEL_CASES)
def test_kernel_matches_reference(shape, dtype):
    pytest.importorskip("triton")
    B, H, HKV, D, m, qpos, window, n_global = shape
    args, _ = _case(*shape, dtype, seed=1)
    want = lambda_decode_reference(**args, window=window, num_global=n_global, scaling=D ** -0.5)
    got = lambda_decode(**args, window=window, num_global=n_global, scaling=D ** -0.5, block_n=32)
    assert got.dtype == dtype and not torch.isnan(got).any()
    atol, rtol = TOLS[dtype]
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol)


def test_kernel_rejects_bad_shapes():
    args, _ = _case(1, 2, 2, 16, 5, 10, 4, 2, torch.float32)
    with pytest.raises(ValueError, match="kpos"):
        lambda_decode(**{**args, "kpos": args["kpos"][:-1]}, window=4, num_global=2, scaling=0.25)
    with pytest.raises(ValueError, match="multiple"):
        lambda_decode(**{**args, "q": args["q"][:, :1].expand(1, 3, 16).contiguous(),
                         "q_far": args["q_far"][:, :1].expand(1, 3, 16).contiguous()},
                      window=4, num_global=2, scaling=0.25)


@pytest.mark.parametrize("m,qpos", [(40, 100), (12, 11)])  # globals far away / everything inside the window
def test_decode_step_glue_matches_rotated_attention(m, qpos):
    """The CUDA decode path (extra rotations + kernel), run here through the interpreter on CPU tensors."""
    pytest.importorskip("triton")
    from fastdecode.attention.context import _decode_step, _key_positions
    from fastdecode.attention.lambda_mask import lambda_attention_rotated
    from fastdecode.attention.rope import FarRotation
    cfg = LambdaAttention(window=16, num_global=4)
    g = torch.Generator().manual_seed(2)
    q = torch.randn(1, 4, 1, 16, generator=g)
    k = torch.randn(1, 2, m, 16, generator=g)
    v = torch.randn(1, 2, m, 16, generator=g)
    inv_freq = _inv_freq(16)
    qp = torch.tensor([qpos])
    kpos = _key_positions(m, qp, cfg.num_global)
    far = FarRotation(qp, kpos[:4], cfg.window, inv_freq) if m > cfg.window else None
    got = _decode_step(q, k, v, qp, kpos, cfg, far, 0.25)[:, 0]  # [B, H, D]
    want = lambda_attention_rotated(q, k, v, qp, kpos, cfg, inv_freq, 0.25)[:, :, 0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
