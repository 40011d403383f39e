"""Lambda-shaped attention (LM-Infinite; Han et al., NAACL'24), the mask and its math.

Terms (``docs/algorithms.md`` section 6):

- ``window`` (L, the paper's L_pretrain): a query at position i sees the *local* keys j with
  0 <= i - j < L (itself included) at their true RoPE distance i - j < L.
- ``num_global`` (n_global): the keys at positions j < n_global are *global* and always visible.
  A global key outside the window is scored at the *distance limit* d = L (the query rotated at
  position L against the un-rotated key); a global key inside the window keeps its true distance, and
  is counted once.
- Everything else is masked, so no RoPE distance ever exceeds L: the model stays inside the distances
  it was trained on, whatever the sequence length.

Two implementations live here, used by tests against each other:

- :func:`lambda_attention_reference`: the dense masked reference (the paper's
  ``detailed_lambda_attention``). It takes *raw* (un-rotated) queries and keys and scores every pair
  by rotating the query by that pair's effective distance (:func:`effective_distances`). Slow, O(c*m*D)
  memory, written for clarity.
- :func:`lambda_attention_rotated`: what the model runs. It takes the queries and keys *already rotated
  at their true positions* (as transformers hands them to an attention function), scores local columns
  with ``q_rot(i) . k_rot(j)``, and global columns outside the window with ``q_rot(L) . k_raw(j)``
  (the query moved to position L, the key moved to position 0: one extra rotation each). Long inputs
  are processed in query blocks of ``window`` rows, each against the global columns plus the keys its
  rows can see (at most ``2 * window``), so attention costs O(n * window) time and memory, never
  O(n^2): this is the paper's ``long_seq`` mode. ``block == window`` gives the dense path.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .rope import FarRotation, apply_rope, rotate_by


@dataclass(frozen=True)
class LambdaAttention:
    """Configuration of Lambda-shaped attention.

    window: L, the local window and the distance limit; set it to the length the model was trained on
        (256 for the code pair). num_global: n_global, the number of leading tokens every query sees.
    max_rollback: recent tokens kept beyond the window so that the cache can be rolled back by this many
        tokens (speculative decoding rejecting drafts); it must be at least the longest draft. It costs
        memory only: the cache holds num_global + window + max_rollback tokens per layer when decoding
        (see :mod:`fastdecode.attention.lambda_cache`), and it never changes what a query attends to.
    decode_kernel: on CUDA, run one-token decode steps through the Triton kernel
        (:mod:`fastdecode.kernels.lambda_decode`) instead of the PyTorch path; both compute the same thing.
    """

    window: int = 256
    num_global: int = 8
    max_rollback: int = 64
    decode_kernel: bool = True

    def __post_init__(self):
        for name, low in (("window", 1), ("num_global", 0), ("max_rollback", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"LambdaAttention.{name} must be an int >= {low}, got {v!r}")
        if not isinstance(self.decode_kernel, bool):
            raise ValueError(f"LambdaAttention.decode_kernel must be a bool, got {self.decode_kernel!r}")


def lambda_masks(qpos: torch.Tensor, kpos: torch.Tensor, cfg: LambdaAttention) -> tuple[torch.Tensor, torch.Tensor]:
    """(local [c, m] bool, far [c, m] bool) for query positions [c] and key positions [m].

    local: 0 <= i - j < L (true distance); far: j is global and i - j >= L (distance limit L).
    A pair is visible iff local | far; the two never overlap.
    """
    dist = qpos[:, None] - kpos[None, :]
    local = (dist >= 0) & (dist < cfg.window)
    far = (kpos[None, :] < cfg.num_global) & (dist >= cfg.window)
    return local, far


def effective_distances(qpos: torch.Tensor, kpos: torch.Tensor, cfg: LambdaAttention) -> torch.Tensor:
    """The RoPE distance each visible pair is scored at, [c, m] long, -1 where the pair is masked."""
    local, far = lambda_masks(qpos, kpos, cfg)
    dist = qpos[:, None] - kpos[None, :]
    out = torch.full_like(dist, -1)
    out = torch.where(local, dist, out)
    return torch.where(far, torch.full_like(dist, cfg.window), out)


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    # [B, Hkv, m, D] -> [B, Hkv * n_rep, m, D] (grouped-query attention)
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _softmax_out(scores: torch.Tensor, visible: torch.Tensor, v: torch.Tensor, mask, dtype) -> torch.Tensor:
    scores = scores.masked_fill(~visible, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    # float32 softmax as transformers' eager attention does (float64 inputs stay float64)
    p = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32)).to(dtype)
    return torch.matmul(p, v)


def lambda_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, qpos: torch.Tensor,
                               kpos: torch.Tensor, cfg: LambdaAttention, inv_freq: torch.Tensor, scaling: float,
                               mask: torch.Tensor | None = None) -> torch.Tensor:
    """Dense masked reference on RAW (un-rotated) q [B, H, c, D], k, v [B, Hkv, m, D] -> [B, H, c, D].

    score(i, j) = (R(d_ij) q_i) . k_j * scaling with d_ij = :func:`effective_distances` (RoPE is
    relative: rotating the query by d and the key by 0 is the same as rotating them at i and i - d).
    ``mask``: optional extra [B|1, H|1, c, m] mask, bool (True = visible) or additive float.
    """
    n_rep = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    d = effective_distances(qpos, kpos, cfg)  # [c, m]
    visible = d >= 0
    angles = d.clamp(min=0).to(torch.float32)[..., None] * inv_freq.to(q.device, torch.float32)  # [c, m, F]
    q_at_d = rotate_by(q[:, :, :, None, :].expand(-1, -1, -1, k.shape[2], -1), angles)  # [B, H, c, m, D]
    scores = (q_at_d * k[:, :, None, :, :]).sum(-1) * scaling  # [B, H, c, m]
    return _softmax_out(scores, visible, v, mask, q.dtype)


def _dense_rotated(q, k, v, qpos, kpos, cfg, scaling, mask, g: int, far_rot: FarRotation | None, rows: slice):
    # q [B, H, c, D] rotated at qpos; k, v [B, Hkv, m, D] rotated at kpos; only the first g key columns
    # may be global (callers keep globals in front); far_rot/rows: the queries' extra rotations
    n_rep = q.shape[1] // k.shape[1]
    k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling  # [B, H, c, m], as eager attention computes it
    local, far = lambda_masks(qpos, kpos, cfg)
    if g:
        far_g = far[:, :g]  # [c, g]
        q_far = far_rot.queries(q, rows)  # q rotated at position L
        k_raw = far_rot.globals(k[:, :, :g])  # globals at position 0
        s_far = torch.matmul(q_far, k_raw.transpose(2, 3)) * scaling  # [B, H, c, g]
        scores = torch.cat([torch.where(far_g, s_far, scores[..., :g]), scores[..., g:]], dim=-1)
        visible = torch.cat([local[:, :g] | far_g, local[:, g:]], dim=-1)
    else:
        visible = local
    return _softmax_out(scores, visible, v, mask, q.dtype)


def lambda_attention_rotated(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, qpos: torch.Tensor,
                             kpos: torch.Tensor, cfg: LambdaAttention, inv_freq: torch.Tensor, scaling: float,
                             mask: torch.Tensor | None = None, block: int | None = None,
                             far_rot: FarRotation | None = None, g: int | None = None) -> torch.Tensor:
    """Lambda attention on queries/keys ROTATED at their true positions; returns [B, H, c, D].

    q [B, H, c, D] at qpos [c]; k, v [B, Hkv, m, D] at kpos [m]. Global keys (kpos < num_global) must lie
    within the first ``g`` columns (the cache layout guarantees it). ``g``: leading columns that may be
    scored as far globals, 0 when no global can be outside the window; by default min(num_global, m) if
    m > window else 0, right for any contiguous layout (a far global needs some pair at distance >= L,
    impossible while every key is within m - 1 < L positions of the queries; skipping it keeps short
    inputs exactly equal to vanilla attention). ``mask``: optional extra mask as in the reference.
    Without a mask and with more than ``block`` (default ``window``) queries, queries are processed in
    blocks against only the columns they can see; this needs qpos and the non-global kpos ascending (a
    causal chunk, the prefill case). ``far_rot``: precomputed :class:`FarRotation` for (qpos, kpos[:g])
    (shared by all layers of a forward), computed here when not given.
    """
    c, m = q.shape[2], k.shape[2]
    if g is None:
        g = min(cfg.num_global, m) if m > cfg.window else 0
    if g and far_rot is None:
        far_rot = FarRotation(qpos, kpos[:g], cfg.window, inv_freq)
    block = block or cfg.window
    if mask is not None or c <= block:
        return _dense_rotated(q, k, v, qpos, kpos, cfg, scaling, mask, g, far_rot, slice(None))
    outs = []
    n_g = max(min(cfg.num_global, m), g)
    starts = list(range(0, c, block))
    q_lo = torch.stack([qpos[a] for a in starts]) - (cfg.window - 1)
    q_hi = torch.stack([qpos[min(a + block, c) - 1] for a in starts])
    lo = torch.searchsorted(kpos[n_g:].contiguous(), q_lo).tolist()  # one host sync for all blocks
    hi = torch.searchsorted(kpos[n_g:].contiguous(), q_hi, right=True).tolist()
    for a, l, h in zip(starts, lo, hi):
        b = min(a + block, c)
        cols = slice(n_g + l, n_g + h)
        kb = torch.cat([k[:, :, :n_g], k[:, :, cols]], dim=2)
        vb = torch.cat([v[:, :, :n_g], v[:, :, cols]], dim=2)
        kp = torch.cat([kpos[:n_g], kpos[cols]])
        outs.append(_dense_rotated(q[:, :, a:b], kb, vb, qpos[a:b], kp, cfg, scaling, None, g, far_rot,
                                   slice(a, b)))
    return torch.cat(outs, dim=2)


__all__ = ["LambdaAttention", "lambda_masks", "effective_distances", "lambda_attention_reference",
           "lambda_attention_rotated", "apply_rope"]
