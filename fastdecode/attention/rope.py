"""Rotary position embedding (RoPE) arithmetic needed to re-assign distances after the fact.

Hugging Face models apply RoPE inside the attention layer *before* the attention function runs, so the
query and key tensors that reach an attention function are already rotated at their true positions:
``x_rot(i) = a * R(theta_i) x`` with ``theta_i = float32(i * inv_freq)`` and ``a`` the rope type's
``attention_scaling`` (1 for the default rope). Rotations compose, so a rotated vector is moved from
position ``i`` to position ``p`` by one more plain rotation ``R(theta_p - theta_i)`` (``a`` is kept,
exactly as it is kept for every other score). This file holds that rotation ("rotate_by") and the
angles ("rope_angles"), computed the same way the model computes them so that un-rotating a key that
the model rotated gives back the raw key up to float rounding.

Only the "rotate half" convention (Llama, Mistral, Qwen2, ...) is implemented: the first ``2 * F``
channels of a head (``F = len(inv_freq)``, fewer than head_dim for partial rotary) are split into two
halves that rotate together; the remaining channels carry no position.
"""
from __future__ import annotations

import torch


def rope_angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """theta [n, F] float32 for integer positions [n], computed exactly as transformers does
    (``position.float() * inv_freq`` in float32)."""
    return positions.to(torch.float32)[:, None] * inv_freq.to(device=positions.device, dtype=torch.float32)[None, :]


def rotation(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [n, F] float64 of the angles ``delta`` [n, F] (float64 keeps a difference of two
    float32 angles, ``theta_p - theta_i``, exactly as given)."""
    delta = delta.double()
    return torch.cos(delta), torch.sin(delta)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [..., n, D] by (cos, sin) [n, F] (rotate-half convention; cast to x's dtype)."""
    f = cos.shape[-1]
    rot = 2 * f
    c, s = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2, rest = x[..., :f], x[..., f:rot], x[..., rot:]
    parts = [x1 * c - x2 * s, x2 * c + x1 * s]
    return torch.cat(parts + [rest] if rest.shape[-1] else parts, dim=-1)


def rotate_by(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [..., n, D] by the angles ``delta`` [n, F] (any float precision)."""
    return rotate(x, *rotation(delta))


def move(x: torch.Tensor, from_pos: torch.Tensor, to_pos: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Re-rotate ``x`` [..., n, D], rotated at ``from_pos`` [n], so that it is rotated at ``to_pos`` [n]."""
    delta = rope_angles(to_pos, inv_freq).double() - rope_angles(from_pos, inv_freq).double()
    return rotate_by(x, delta)


class FarRotation:
    """The two extra rotations of Lambda attention, computed once per forward and shared by all layers:
    queries rotated at ``qpos`` [c] -> rotated at the distance limit ``window``; the leading global keys
    rotated at ``kpos_glob`` [g] -> position 0 (pre-RoPE)."""

    def __init__(self, qpos: torch.Tensor, kpos_glob: torch.Tensor, window: int, inv_freq: torch.Tensor):
        self.g = int(kpos_glob.shape[0])  # number of leading key columns it un-rotates
        theta_q = rope_angles(qpos, inv_freq).double()
        self.q = rotation(rope_angles(torch.full_like(qpos, window), inv_freq).double() - theta_q)
        self.k = rotation(-rope_angles(kpos_glob, inv_freq).double())

    def queries(self, q: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        # q: [B, H, c', D] (rows of this forward's queries) -> rotated at position window
        return rotate(q, self.q[0][rows], self.q[1][rows])

    def globals(self, k: torch.Tensor) -> torch.Tensor:
        # k: [B, Hkv, g', D] (the first g' <= g global keys) -> pre-RoPE
        g = k.shape[-2]
        return rotate(k, self.k[0][:g], self.k[1][:g])


def apply_rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate raw vectors ``x`` [..., n, D] at ``positions`` [n] (reference helper for tests)."""
    return rotate_by(x, rope_angles(positions, inv_freq))
