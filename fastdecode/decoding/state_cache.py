"""Caches with recurrent state: the layers of Mamba-2 mixers, gated delta nets and short convolutions
(transformers' linear-attention cache layers), alone or beside attention layers in hybrid models
(Qwen3-Next, Qwen3.5, Falcon-H1, Granite-4, Nemotron-H, LFM2, OLMo-hybrid).

Such a layer keeps no entry per position, only the result of every token so far, so it cannot be cropped
back past rejected drafts (transformers' assisted generation refuses these models for that reason). The
dynamic engine rewinds it instead (:class:`StateLog`, kept on the cache by ``hf_cache.new_cache``):
- before each forward the state layers' tensors are copied (a snapshot; their size does not grow with the
  context); the first snapshot after the last crop and the :data:`RECENT` newest are kept;
- ``crop(length)`` restores the newest snapshot taken at a length <= ``length`` and crops the attention layers
  to that length as usual: the cache may then hold fewer than ``length`` positions. Every decoding loop feeds a
  model the tokens its cache has not seen (``tokens[cache_length:]``) with its next forward, so the tokens
  between the snapshot and ``length`` go into that forward together with the new ones: no extra forward.
  A draft chain rewinds to a snapshot of its own (nothing fed again); after a verification that rejects a
  draft, the target's next forward also takes the accepted tokens of the last one;
- every crop is a commit: later crops never go below it (the decoding loops crop to the accepted text,
  which only grows), so older snapshots are dropped.

Rewinding is exact only if a forward of several tokens continues the state as the same tokens fed one by one
would, which not every model's code does (transformers' Mamba-1 mixers restart their scan from zero when
given several tokens). :data:`CONTINUES_STATE` lists the model types tested to continue it
(``tests/end_to_end/test_state_models.py``); the others decode with ``method="autoregressive"`` only.
A draft tree (``multi_draft``) would run the branches of a tree through one recurrence, so it is refused;
a batch runs together for plain decoding and row by row for the drafting methods; the static engine refuses
these models (its caches hold attention only).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer

try:   # transformers >= 5.2x: linear-attention (recurrent state) cache layers
    from transformers.cache_utils import LinearAttentionCacheLayerMixin as _StateLayer
except ImportError:   # pragma: no cover - older transformers: no such layers
    _StateLayer = ()

RECENT = 4   # newest snapshots kept besides the first one after a crop (a draft chain rewinds to its own)

# model types (their text config's) whose multi-token forwards continue the recurrent state exactly, as
# tested on tiny random models (tests/end_to_end/test_state_models.py): rewinding by feeding again is exact
CONTINUES_STATE = frozenset({
    "falcon_h1", "mamba2", "lfm2", "lfm2_moe", "qwen3_next", "qwen3_5", "qwen3_5_text", "qwen3_5_moe",
    "qwen3_5_moe_text", "granitemoehybrid", "nemotron_h", "olmo_hybrid", "inkling_text", "lara_mini", "lfm3",
    "zaya", "zamba",
})


# cache layer classes whose positions fastdecode can crop or select (or, for state layers, rewind); a model whose
# cache has another (DeepSeek-V4's compressed attention: buffers and running compressed entries) decodes plainly
KNOWN_LAYERS = frozenset({"DynamicLayer", "DynamicSlidingWindowLayer", "DynamicIndexedLayer", "DummyLayer"})


def _cache_layers(model) -> list:
    """The layers transformers' cache gives ``model`` (none for a config its cache cannot read: the model's own
    code then decides)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config).layers
    except Exception:
        return []


def foreign_layers(model) -> list[str]:
    """Names of the classes of ``model``'s cache layers that fastdecode cannot roll back (none: every method runs)."""
    return sorted({type(layer).__name__ for layer in _cache_layers(model)
                   if not is_state_layer(layer) and type(layer).__name__ not in KNOWN_LAYERS})


def is_state_layer(layer) -> bool:
    return bool(_StateLayer) and isinstance(layer, _StateLayer)


def state_model_type(model) -> str | None:
    """The (text) model type of ``model`` when its cache has recurrent-state layers, else None."""
    if not any(map(is_state_layer, _cache_layers(model))):
        return None
    config = model.config
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    return str(getattr(text, "model_type", type(model).__name__))


# a state layer's per-state flags, restored with its tensors
_FLAGS = ("is_conv_states_initialized", "is_recurrent_states_initialized", "has_previous_state", "conv_kernel_size")


@dataclass
class _Snapshot:
    length: int
    states: dict   # layer index -> that layer's state tensors and flags


def _snapshot(cache, length: int) -> _Snapshot:
    states = {}
    for j, layer in enumerate(cache.layers):
        if not is_state_layer(layer):
            continue
        states[j] = dict(
            conv={i: None if t is None else t.clone() for i, t in layer.conv_states.items()},
            recurrent={i: None if t is None else t.clone() for i, t in layer.recurrent_states.items()},
            flags=[dict(getattr(layer, name)) for name in _FLAGS], device=layer.device, dtype=layer.dtype)
    return _Snapshot(length, states)


def _restore(cache, snap: _Snapshot) -> None:
    for j, saved in snap.states.items():
        layer = cache.layers[j]
        for field, values in (("conv_states", saved["conv"]), ("recurrent_states", saved["recurrent"])):
            live = getattr(layer, field)
            for i, t in values.items():
                if t is not None and live.get(i) is not None and live[i].shape == t.shape:
                    live[i].copy_(t)     # in place: the tensor keeps its address
                else:
                    live[i] = None if t is None else t.clone()
        for name, value in zip(_FLAGS, saved["flags"]):
            setattr(layer, name, dict(value))
        layer.device, layer.dtype = saved["device"], saved["dtype"]


def select_rows(layer, rows: torch.Tensor) -> None:
    """Keep the given batch rows of a state layer's tensors (its attention half, if any, is the caller's)."""
    for field in ("conv_states", "recurrent_states"):
        live = getattr(layer, field)
        for i, t in live.items():
            if t is not None:
                live[i] = t.index_select(0, rows.to(t.device))


class StateLog:
    """The length of a cache with state layers (transformers' ``get_seq_length`` cannot count a cache of state
    layers alone) and, when ``rewindable``, what rewinding it needs (module docstring)."""

    def __init__(self, rewindable: bool = True):
        self.length = 0
        self.rewindable = rewindable
        self.snaps: list[_Snapshot] = []
        self.masked = False   # a forward since the last commit took an explicit attention mask

    def before_forward(self, cache, ids: torch.Tensor, attention_mask) -> None:
        if not self.rewindable:
            return
        if ids.shape[0] != 1:
            raise ValueError("a cache with recurrent-state layers is rewound one row at a time (batches of these "
                             "models run row by row)")
        snap = _snapshot(cache, self.length)
        self.snaps.append(snap)
        if len(self.snaps) > RECENT + 1:
            del self.snaps[1]
        self.masked |= attention_mask is not None

    def after_forward(self, n: int) -> None:
        self.length += n

    def commit(self) -> None:
        self.snaps.clear()
        self.masked = False

    def crop(self, cache, length: int) -> None:
        """Rewind ``cache`` to at most its first ``length`` positions (to the newest snapshot at or before
        ``length``; the caller feeds the rest again with its next forward)."""
        if length >= self.length:
            self.commit()
            return
        if not self.rewindable or not self.snaps or self.snaps[0].length > length or self.masked:
            raise ValueError(f"cannot rewind this cache of recurrent-state layers from {self.length} to {length} "
                             "positions (no snapshot there)")
        snap = max((s for s in self.snaps if s.length <= length), key=lambda s: s.length)
        drop = self.length - snap.length
        for layer in cache.layers:   # the attention layers (and the attention half of hybrid layers)
            if isinstance(layer, DynamicLayer):
                DynamicLayer.crop(layer, -drop)
            elif not is_state_layer(layer):
                layer.crop(-drop)
        _restore(cache, snap)
        self.length = snap.length
        self.commit()
