"""Sliding-window layers on the static engine in a ring of slots: memory O(window) per windowed layer.

A model with its own sliding window (Mistral, Phi-3, Gemma-2/3, ...) never lets a windowed layer's query see
a key ``window`` or more positions behind it, so such a layer needs only the last ``window`` positions and
whatever the forward under way writes. When a generation is long enough for it to matter, the single-row
static runner gives each windowed layer a ring of

    R = window + max(longest forward of the loop, PREFILL_PIECE) slots,

where logical slot m (the slot the full-capacity layers use) lives at m mod R; full-attention layers keep
the whole capacity. Shared by all windowed layers: ``ring_idx`` [R], the logical slot each ring slot holds
(a far-future sentinel when never written), and ``ring_pos`` [R], the position of its key. A forward's mask
for the windowed layers is the full layers' mask over logical slots (``allow`` [n, width], unchanged: causal,
tree prefix and ancestors) gathered at ``ring_idx``, with the window applied by ``ring_pos``; a slot that
holds another lap's key is hidden because its logical index is not the one the query may see.

Why R suffices: a forward writing logical slots s .. s + n - 1 (n <= R - window) overwrites the ring slots of
s - R .. s + n - 1 - R, all more than ``window`` positions behind any query of it (a chain query at logical
index j sits at position j; a tree node sits at root + depth <= its logical index and needs the committed
keys less than ``window`` positions behind it, all at logical >= s - window + 1 > s + n - 1 - R). Every loop
writes its forwards at or after the committed length, so a rejected draft is rewritten (or lies in every
query's future) as in the full-capacity layout; a tree's accepted path is copied down from slots the step
wrote (:func:`move`). The prompt is prefilled in pieces of at most ``PREFILL_PIECE`` tokens, eager forwards
(never recorded), so the same bound holds there.

The ring is used only where it is smaller than the capacity (short generations keep the full layout, so
their forwards are unchanged), for single rows (batches keep the full capacity), and not under Lambda
attention (whose ring replaces the model's window altogether: ``static_lambda``).
"""
from __future__ import annotations

import torch
from .masks import additive
from .written_layer import WrittenLayer

PREFILL_PIECE = 512   # prompt tokens per prefill forward when windowed layers keep a ring
UNWRITTEN = 1 << 40   # the logical slot of a ring slot never written: no query may see it


def ring_needed(window: int, span: int | None) -> int:
    """The slots a windowed layer's ring needs for forwards of at most ``span`` tokens (and the prefill's)."""
    return window + max(span or 0, PREFILL_PIECE)


def ring_size(window: int | None, capacity: int, span: int | None) -> int | None:
    """Slots of a windowed layer's ring for forwards of at most ``span`` tokens, or None (no window, no span
    given, or a ring no smaller than the capacity)."""
    if window is None or span is None:
        return None
    ring = ring_needed(window, span)
    return ring if ring < capacity else None


def cache_layer_types(model) -> list[str | None]:
    """The attention type of each layer of the model's KV cache (None: no ``config.layer_types``). One per decoder
    layer, except for looped models that give every loop past the first its own copies of the recurrent layers'
    cache (Dory, ``recurrent_kv_cache_mode="per_loop"``): those copies follow, in loop order. Dory appends them
    itself (``copy.deepcopy``) to a cache of exactly ``num_hidden_layers`` layers, which for slot layers would
    copy the cache they share (its write position, width and positions) too; a cache that already has them is
    used as it is."""
    cfg = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") else model.config
    n = cfg.num_hidden_layers
    types = list(getattr(cfg, "layer_types", None) or [None] * n)[:n]
    loops, rec = getattr(cfg, "n_recurrent_loops", None), getattr(cfg, "n_recurrent_layers", None)
    if loops and rec and getattr(cfg, "recurrent_kv_cache_mode", None) == "per_loop":
        first = cfg.n_input_layers
        types += types[first:first + rec] * (loops - 1)
    return types


def windowed_layers(model, num_layers: int) -> list[bool]:
    """Which cache layers (:func:`cache_layer_types`) attend through the model's window (every one, unless
    ``config.layer_types`` says otherwise)."""
    types = cache_layer_types(model)
    if types[0] is None:
        return [True] * num_layers
    return [t == "sliding_attention" for t in types[:num_layers]]


class WindowRingLayer(WrittenLayer):
    """A windowed layer's keys and values [1, H, R, D]: logical slot m at ring slot m mod R (``owner.ring``);
    the runner computes the forward's ring slots once (``owner.ring_write``)."""

    def __init__(self, owner):
        super().__init__(owner.ring, owner)

    def slots(self, n: int, device) -> torch.Tensor:
        slots = self.owner.ring_write
        if slots is None or slots.shape[0] != n:   # pragma: no cover - the runner sets them
            slots = torch.remainder(torch.arange(n, device=device) + self.owner.start, self.owner.ring)
        return slots


def ring_mask(cache, allow: torch.Tensor, qpos: torch.Tensor, write: torch.Tensor, window: int, dtype):
    """The windowed layers' additive mask [1, 1, n, R] of a forward whose queries (positions ``qpos`` [n])
    write the logical slots ``write`` [n] and see the logical slots ``allow`` [n, width] says: records the
    written slots' logical index and position in the ring first (the layers then write their keys there)."""
    slots = torch.remainder(write, cache.ring)
    cache.ring_write = slots
    cache.ring_idx.index_copy_(0, slots, write)
    cache.ring_pos.index_copy_(0, slots, qpos)
    idx, width = cache.ring_idx, allow.shape[-1]
    seen = allow.gather(1, idx.clamp(max=width - 1)[None, :].expand(allow.shape[0], -1)) & (idx < width)[None, :]
    return additive(seen & (qpos[:, None] - cache.ring_pos[None, :] < window), dtype)


def move(cache, frm: torch.Tensor, to: torch.Tensor) -> None:
    """Copy the ring layers' keys and values of logical slots ``frm`` to logical slots ``to`` (both [m] long,
    each source written by the step under way, so still in the ring), with their position. (The step has
    written the destinations too, so their logical index is already theirs; it is set again for clarity.)"""
    src, dst = torch.remainder(frm, cache.ring), torch.remainder(to, cache.ring)
    for layer in cache.layers:
        if isinstance(layer, WindowRingLayer) and layer.is_initialized:
            layer.keys.index_copy_(2, dst, layer.keys.index_select(2, src))
            layer.values.index_copy_(2, dst, layer.values.index_select(2, src))
    cache.ring_pos.index_copy_(0, dst, cache.ring_pos.index_select(0, src))
    cache.ring_idx.index_copy_(0, dst, to)
