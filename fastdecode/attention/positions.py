"""Where the keys of one Lambda-attention forward sit: their true positions, which columns may be far
globals, and how a caller's 4D mask maps onto them. Computed once per forward and shared by all layers.

Two sources of key positions:

- a :class:`~fastdecode.attention.lambda_cache.LambdaCache` records, for every stored key, its logical index
  and its true position (:class:`~fastdecode.attention.layout.Layout`); :func:`layout_view` reads them.
  This is exact for any layout, token trees included (siblings at the same position, a draft cache
  holding the context plus earlier tree levels, paths kept by ``select``);
- without one (no cache, or a transformers ``DynamicCache``), the cached keys are taken to be a plain
  sequence: globals, then a contiguous run of recent tokens ending right before the chunk
  (:func:`key_positions`), and :func:`plain_view` derives everything from the query positions.

A caller's 4D mask indexes the *logical* sequence ([.., c, logical length + c]); ``ForwardView.cols``
are the logical indices of the keys the attention function holds, so ``mask[..., columns]`` is the part
of the mask that concerns them.
"""
from __future__ import annotations

import torch

from .layout import host_long
from .rope import FarRotation


def key_positions(m: int, qpos: torch.Tensor, num_global: int) -> torch.Tensor:
    """[m] long positions of m keys laid out as a plain sequence: the m - c cached ones (globals, then a
    run ending right before the chunk at qpos[0]), then the chunk's own positions ``qpos`` [c]."""
    c = qpos.shape[0]
    j = torch.arange(m - c, device=qpos.device)
    cached = torch.where(j < num_global, j, j + (qpos[0] - (m - c)))
    return torch.cat([cached, qpos])


def device_long(values: list[int], device) -> torch.Tensor:
    """A long tensor on ``device`` from host ints, without a host sync on CUDA (pinned, non-blocking)."""
    t = host_long(values)
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class ForwardView:
    """Positions of one forward: ``qpos`` [c] and ``kpos`` [m] (device, long), ``far`` (the extra
    rotations, or None when no global can be outside the window), ``g`` (leading key columns that may be
    far globals; 0 = none), ``width`` (logical length of the sequence a caller's mask indexes) and the
    logical index of every key column (``cols``, host ints; None for a plain layout, where the cached
    keys' positions are their logical indices)."""

    __slots__ = ("qpos", "kpos", "far", "g", "width", "_cols", "_cols_dev")

    def __init__(self, qpos, kpos, far, g: int, width: int, cols: list[int] | None):
        self.qpos, self.kpos, self.far, self.g, self.width = qpos, kpos, far, g, width
        self._cols, self._cols_dev = cols, {}

    def mask_for_keys(self, mask: torch.Tensor) -> torch.Tensor:
        """The columns of a caller's 4D mask [B|1, H|1, c, width] that belong to the keys held: [.., c, m]."""
        m = self.kpos.shape[0]
        if mask.shape[-1] == m:  # already over the keys held (nothing evicted, or the caller gathered)
            return mask
        if mask.shape[-1] != self.width:
            raise ValueError(f"Lambda attention: the 4D attention mask has {mask.shape[-1]} key columns; expected the "
                             f"logical sequence length {self.width} (cached tokens + this chunk) or the {m} keys held")
        cols = self._cols_dev.get(mask.device)
        if cols is None:
            if self._cols is None:  # plain layout: the cached keys' positions are their logical indices
                c = self.qpos.shape[0]
                cols = torch.cat([self.kpos[:m - c], self.qpos[0] + torch.arange(c, device=self.qpos.device)])
            else:
                cols = device_long(self._cols, mask.device)
            cols = self._cols_dev[mask.device] = cols.to(mask.device)
        return mask.index_select(-1, cols)


def _far(qpos: torch.Tensor, kpos: torch.Tensor, g: int, window: int, inv_freq) -> FarRotation | None:
    return FarRotation(qpos, kpos[:g], window, inv_freq) if g else None


def layout_view(layout, qpos: torch.Tensor, qhost: tuple[int, ...], window: int, num_global: int,
                inv_freq: torch.Tensor) -> ForwardView:
    """View of the keys a LambdaLayer returned, from its layout with the chunk's positions attached
    (``layout.pos[-c:] == qhost``; ``qpos`` is the same on the device)."""
    c, pos = len(qhost), layout.pos
    stored = pos[:len(pos) - c]
    kpos = torch.cat([device_long(stored, qpos.device), qpos]) if stored else qpos
    # global columns: every key at a position < num_global must lie within the first g columns (the
    # first num_global logical tokens come first; tree nodes of a prompt shorter than num_global follow)
    n_prot = layout.protected()
    if len(pos) > n_prot and min(pos[n_prot:]) < num_global:  # rare: scan everything
        glob = [j for j, p in enumerate(pos) if p < num_global]
    else:
        glob = [j for j in range(n_prot) if pos[j] < num_global]
    far_possible = bool(glob) and max(qhost) - min(pos[j] for j in glob) >= window
    g = glob[-1] + 1 if far_possible else 0
    return ForwardView(qpos, kpos, _far(qpos, kpos, g, window, inv_freq), g, layout.length, layout.idx)


def plain_view(qpos: torch.Tensor, qhost: tuple[int, ...], m: int, window: int, num_global: int,
               inv_freq: torch.Tensor) -> ForwardView:
    """View of m keys laid out as a plain sequence (no cache, or a cache without position records)."""
    c = len(qhost)
    kpos = key_positions(m, qpos, num_global)
    # a far global needs some pair at distance >= L, impossible while every key is within m - 1 < L
    # positions of the queries (true for any contiguous layout)
    g = min(num_global, m) if m > window else 0
    return ForwardView(qpos, kpos, _far(qpos, kpos, g, window, inv_freq), g, qhost[0] + c if c else m, None)
