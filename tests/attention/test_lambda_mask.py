"""Lambda attention math: mask and distances, block-wise == dense masked reference, short == vanilla."""
from __future__ import annotations

import pytest
import torch

from fastdecode.attention.lambda_mask import (
    LambdaAttention, effective_distances, lambda_attention_reference, lambda_attention_rotated, lambda_masks)
from fastdecode.attention.rope import apply_rope


def _inv_freq(d_rot: int) -> torch.Tensor:
    return 1.0 / (10000 ** (torch.arange(0, d_rot, 2, dtype=torch.float32) / d_rot))


def _qkv(n, H=4, HKV=2, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, H, n, D, generator=g, dtype=torch.float64),
            torch.randn(1, HKV, n, D, generator=g, dtype=torch.float64),
            torch.randn(1, HKV, n, D, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("bad", [dict(window=0), dict(window=2.5), dict(num_global=-1), dict(window=True),
                                 dict(max_rollback=-1), dict(decode_kernel=1)])
def test_config_validation(bad):
    with pytest.raises(ValueError, match="window|num_global|max_rollback|decode_kernel"):
        LambdaAttention(**bad)


def test_mask_and_distances_by_hand():
    cfg = LambdaAttention(window=3, num_global=2)
    pos = torch.arange(7)
    d = effective_distances(pos, pos, cfg)
    # row 6: globals 0, 1 at the distance limit 3; keys 4, 5, 6 at true distances 2, 1, 0; 2, 3 masked
    assert d[6].tolist() == [3, 3, -1, -1, 2, 1, 0]
    # row 3: global 0 outside the window (limit 3), global 1 inside (true distance 2), counted once
    assert d[3].tolist() == [3, 2, 1, 0, -1, -1, -1]
    local, far = lambda_masks(pos, pos, cfg)
    assert not (local & far).any()
    assert torch.equal(local | far, d >= 0)
    assert not (d[torch.triu(torch.ones(7, 7, dtype=torch.bool), 1)] >= 0).any()  # causal


def test_max_rope_distance_is_window():
    cfg = LambdaAttention(window=16, num_global=4)
    pos = torch.arange(200)
    d = effective_distances(pos, pos, cfg)
    assert int(d.max()) == cfg.window  # the distance limit is reached (globals) and never exceeded
    assert int(d[:, cfg.num_global:].max()) == cfg.window - 1


@pytest.mark.parametrize("n,window,n_global,block", [(100, 16, 4, None), (77, 10, 3, 7), (64, 64, 2, None),
                                                     (50, 8, 0, 5)])
def test_blockwise_rotated_equals_dense_reference(n, window, n_global, block):
    cfg = LambdaAttention(window=window, num_global=n_global)
    q, k, v = _qkv(n)
    inv_freq = _inv_freq(q.shape[-1])
    pos = torch.arange(n)
    want = lambda_attention_reference(q, k, v, pos, pos, cfg, inv_freq, 0.25)
    qr, kr = apply_rope(q, pos, inv_freq), apply_rope(k, pos, inv_freq)
    got = lambda_attention_rotated(qr, kr, v, pos, pos, cfg, inv_freq, 0.25, block=block)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # a chunk on top of a cache with evicted tokens (cache layout: globals, then a recent run)
    kpos = torch.cat([torch.arange(n_global), torch.arange(n - window - 5, n)]) if n > window + 5 + n_global else pos
    sel = kpos
    got_c = lambda_attention_rotated(qr[:, :, -6:], kr[:, :, sel], v[:, :, sel], pos[-6:], kpos, cfg, inv_freq, 0.25)
    torch.testing.assert_close(got_c, want[:, :, -6:], atol=1e-5, rtol=1e-5)


def test_dense_reference_detects_unlimited_distances():
    """The comparison above fails for a broken variant that scores globals at their true distance."""
    cfg = LambdaAttention(window=16, num_global=4)
    q, k, v = _qkv(100)
    inv_freq = _inv_freq(q.shape[-1])
    pos = torch.arange(100)
    want = lambda_attention_reference(q, k, v, pos, pos, cfg, inv_freq, 0.25)
    qr, kr = apply_rope(q, pos, inv_freq), apply_rope(k, pos, inv_freq)
    local, far = lambda_masks(pos, pos, cfg)
    kk, vv = kr.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    s = (qr @ kk.transpose(2, 3) * 0.25).masked_fill(~(local | far), float("-inf"))
    broken = torch.softmax(s, -1) @ vv
    assert (broken - want).abs().max() > 1e-2


def test_short_sequences_equal_vanilla_attention():
    cfg = LambdaAttention(window=40, num_global=4)
    q, k, v = _qkv(40)
    inv_freq = _inv_freq(q.shape[-1])
    pos = torch.arange(40)
    qr, kr = apply_rope(q, pos, inv_freq), apply_rope(k, pos, inv_freq)
    vanilla = torch.nn.functional.scaled_dot_product_attention(
        qr, kr.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True, scale=0.25)
    got = lambda_attention_rotated(qr, kr, v, pos, pos, cfg, inv_freq, 0.25)
    torch.testing.assert_close(got, vanilla, atol=1e-12, rtol=1e-12)
    long_q, long_k, long_v = _qkv(50)  # longer than the window: no longer vanilla
    p50 = torch.arange(50)
    qr, kr = apply_rope(long_q, p50, inv_freq), apply_rope(long_k, p50, inv_freq)
    vanilla = torch.nn.functional.scaled_dot_product_attention(
        qr, kr.repeat_interleave(2, 1), long_v.repeat_interleave(2, 1), is_causal=True, scale=0.25)
    got = lambda_attention_rotated(qr, kr, long_v, p50, p50, cfg, inv_freq, 0.25)
    assert (got[:, :, -1] - vanilla[:, :, -1]).abs().max() > 1e-6
