"""A bounded KV cache for Lambda attention: the global tokens plus a recent window, with logical lengths.

Layout of every layer (``keys``/``values`` are [B, Hkv, m, D], as in transformers' DynamicLayer):

    [ the first g = min(num_global, length) tokens | the recent tokens, in logical order ]

Keys are stored exactly as the model produced them, i.e. rotated at their true positions; the attention
function moves the few global keys back to position 0 when it needs the distance limit (see
:mod:`fastdecode.attention.context`), so no RoPE state lives in the cache. ``length`` is the *logical*
number of tokens seen (what ``get_seq_length`` and :func:`fastdecode.decoding.hf_cache.cache_length`
report); for every stored slot the layer records its logical index and its true position (a
:class:`~fastdecode.attention.layout.Layout`, see that module for the rules), so token trees work: tree
nodes sit at root + depth, siblings share a position, and ``select_positions`` keeps the accepted path
with its positions. The attention function reads these positions (``update`` tells the cache's tracker,
the model's :class:`~fastdecode.attention.context.LambdaState`, which layer returned which keys; the
attention function then attaches the forward's position ids to the new slots).

The physical size m stays bounded:

- before appending a chunk, recent tokens at positions below (newest stored position + 1) - (window - 1)
  - max_rollback are evicted: no query of the chunk can see them, and no rollback of up to
  ``max_rollback`` tokens (speculative decoding rejecting drafts) can need them;
- after a long chunk (more than ``window`` tokens, i.e. a prefill), only its last window - 1 +
  max_rollback positions are kept, so a long prompt never stays in memory.

So for a plain sequence one layer holds at most ``num_global + window - 1 + max_rollback + chunk`` tokens
during a forward and ``num_global + window - 1 + max_rollback + min(last chunk, window)`` between
forwards; a decode step needs ``num_global + window + max_rollback``; tree nodes add at most the tree's
size and leave with the next ``select_positions``. Rolling back (``crop``) and keeping tree paths
(``select_positions``) are exact as long as the next query keeps its whole window (rolling back at most
``max_rollback`` tokens behind the last chunk); anything that would leave it without raises
``ValueError`` instead of silently attending to fewer tokens.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from .layout import Layout, empty_layout


class LambdaLayer(DynamicLayer):
    """One layer of :class:`LambdaCache` (see the module docstring for the layout)."""

    is_sliding = False

    def __init__(self, window: int, num_global: int, max_rollback: int = 64, tracker=None,
                 layout: Layout | None = None):
        super().__init__()
        self.window, self.num_global, self.max_rollback = window, num_global, max_rollback
        self.tracker = tracker  # told which keys update() returned (see attach_positions)
        self.layout = empty_layout(window, num_global, max_rollback) if layout is None else layout

    @property
    def length(self) -> int:
        """Logical tokens seen."""
        return self.layout.length

    # -- layout helpers -------------------------------------------------------------------------
    def _stored(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[-2])

    def positions(self) -> torch.Tensor:
        """True positions of the stored tokens [m] (long, CPU)."""
        return torch.tensor(self.layout.pos, dtype=torch.long)

    def indices(self) -> torch.Tensor:
        """Logical indices of the stored tokens [m] (long, CPU)."""
        return torch.tensor(self.layout.idx, dtype=torch.long)

    def _keep(self, idx: list[int] | slice) -> None:
        if isinstance(idx, slice):
            self.keys, self.values = self.keys[..., idx, :], self.values[..., idx, :]
        else:
            t = torch.tensor(idx, dtype=torch.long, device=self.keys.device)
            self.keys, self.values = self.keys.index_select(-2, t), self.values.index_select(-2, t)

    def _drop(self, g: int, e: int) -> None:
        if e > g:
            self.keys = torch.cat([self.keys[..., :g, :], self.keys[..., e:, :]], dim=-2)
            self.values = torch.cat([self.values[..., :g, :], self.values[..., e:, :]], dim=-2)

    # -- transformers' layer API ----------------------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append a chunk [B, Hkv, c, D]; returns all keys/values its queries may need (old + new)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states[..., :0, :], value_states[..., :0, :]
        (g, e), self.layout = self.layout.append(key_states.shape[-2])
        if e > g:  # evict what neither this chunk's queries nor a rollback can need (one copy)
            keys = torch.cat([self.keys[..., :g, :], self.keys[..., e:, :], key_states], dim=-2)
            values = torch.cat([self.values[..., :g, :], self.values[..., e:, :], value_states], dim=-2)
        else:
            keys = torch.cat([self.keys, key_states], dim=-2)
            values = torch.cat([self.values, value_states], dim=-2)
        self.keys, self.values = keys, values
        if self.tracker is not None:
            self.tracker.track(self, keys)
        return keys, values

    def attach_positions(self, qpos: tuple[int, ...]) -> Layout:
        """Called by the attention function right after ``update``: the new slots sit at the true positions
        ``qpos`` (the forward's position ids). Returns the layout of the keys ``update`` returned; a chunk
        longer than the window is trimmed here (the forward still holds the returned keys)."""
        full, (g, e), self.layout = self.layout.attach(qpos)
        self._drop(g, e)
        return full

    def get_seq_length(self) -> int:
        return self.layout.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._stored() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        super().reset()
        self.keys = self.values = None
        self.is_initialized = False
        self.layout = empty_layout(self.window, self.num_global, self.max_rollback)

    def crop(self, max_length: int, plan: tuple | None = None) -> None:
        """Keep the first ``max_length`` logical tokens; a negative value removes that many (both forms
        are accepted, as transformers 5.17 and 5.24 differ). ``plan``: the layout's ``crop`` result, when
        the cache computed it once for all layers."""
        new_length = self.length + max_length if max_length < 0 else max_length
        if new_length >= self.length or not self.is_initialized:
            return
        k, self.layout = plan or self.layout.crop(max(new_length, 0))
        self._keep(slice(0, k))

    def select_positions(self, positions: torch.Tensor | list[int], plan: tuple | None = None) -> None:
        """Keep the logical tokens ``positions`` [n] (increasing) as the new sequence 0..n-1; each keeps
        its true position. ``plan``: the layout's ``select`` result, computed once by the cache."""
        slots, self.layout = plan or self.layout.select(_cpu_long(positions))
        self._keep(slice(0, len(slots)) if slots == list(range(len(slots))) else slots)


def _cpu_long(positions: torch.Tensor | list[int]) -> torch.Tensor:
    if isinstance(positions, torch.Tensor):
        return positions.to("cpu", torch.long).reshape(-1)
    return torch.tensor(list(positions), dtype=torch.long)


class LambdaCache(Cache):
    """KV cache of a model under :func:`fastdecode.attention.lambda_attention`; one :class:`LambdaLayer` per layer.

    ``tracker``: the object whose ``track(layer, keys)`` each layer calls from ``update`` (the model's
    ``LambdaState``, so that its attention function can attach true positions); without one, every chunk
    is assumed to continue a plain sequence (position == logical index)."""

    def __init__(self, num_layers: int, window: int, num_global: int, max_rollback: int = 64, tracker=None):
        start = empty_layout(window, num_global, max_rollback)  # shared: layers memoise the same transitions
        super().__init__(layers=[LambdaLayer(window, num_global, max_rollback, tracker, start)
                                 for _ in range(num_layers)])
        self.window, self.num_global, self.max_rollback = window, num_global, max_rollback

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].get_seq_length() if layer_idx < len(self.layers) else 0

    def _plans(self, make) -> dict:
        # one layout transition per distinct layout object (all layers share one in practice)
        plans: dict[int, tuple] = {}
        for layer in self.layers:
            if layer.is_initialized and id(layer.layout) not in plans:
                plans[id(layer.layout)] = make(layer.layout)
        return plans

    def crop(self, max_length: int) -> None:
        new_length = self.get_seq_length() + max_length if max_length < 0 else max_length
        plans = self._plans(lambda lay: lay.crop(max(new_length, 0)) if new_length < lay.length else None)
        for layer in self.layers:
            layer.crop(max_length, plans.get(id(layer.layout)))

    def reset(self) -> None:
        super().reset()
        start = empty_layout(self.window, self.num_global, self.max_rollback)
        for layer in self.layers:
            layer.layout = start

    def select_positions(self, positions: torch.Tensor | list[int]) -> None:
        """Keep only the given logical positions [n] (increasing) in every layer (multi-draft paths)."""
        keep = _cpu_long(positions)
        plans = self._plans(lambda lay: lay.select(keep))
        for layer in self.layers:
            if layer.is_initialized:
                layer.select_positions(keep, plans[id(layer.layout)])

    def stored_tokens(self) -> int:
        """Physical tokens held by the largest layer (at most num_global + window - 1 + max_rollback + the
        last chunk's length, capped at window, between forwards, plus tree nodes not yet selected away)."""
        return max((layer._stored() for layer in self.layers), default=0)

    def nbytes(self) -> int:
        """Bytes held by all stored keys and values."""
        return sum(t.numel() * t.element_size() for layer in self.layers if layer.is_initialized
                   for t in (layer.keys, layer.values))
