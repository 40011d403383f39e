"""The one place that knows how transformers' KV caches and forward signatures differ between versions.

- transformers 5.17 takes ``past_key_values=``; later releases renamed it ``cache=`` (the old name is
  deprecated). :func:`forward` picks the right keyword once per model class.
- ``DynamicCache.crop(n)``: in 5.17 a positive n was the absolute length to keep; newer releases reject
  positive values and only accept -tokens_to_remove. :func:`crop` always passes the negative form,
  which means the same thing in both.
- Sliding-window layers: ``DynamicCache(config=...)`` gives them a ``DynamicSlidingWindowLayer`` that
  drops keys older than the window and so cannot be cropped back past it, nor have positions selected
  (its ``cumulative_length`` would go stale). :func:`new_cache` gives those layers a full
  ``DynamicLayer`` instead: the models' mask functions (``create_sliding_window_causal_mask``) apply the
  window from ``config.sliding_window`` and the positions, whatever the cache keeps, so the output is the
  same and crop / select work anywhere (at the cost of keeping the whole context in those layers).
  Custom 4D masks (the multi-draft tree) bypass those mask functions: :func:`attention_layout` says which
  window each layer type needs, and ``decoding.tree`` applies it.
"""
from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

try:   # hybrid layers (a recurrent state beside attention): transformers >= 5.2x
    from transformers.cache_utils import LinearAttentionAndFullAttentionLayer as _HybridFull
    from transformers.cache_utils import LinearAttentionAndSlidingWindowAttentionLayer as _HybridSliding
except ImportError:   # pragma: no cover
    _HybridFull = _HybridSliding = None

from ..attention.windows import attention_layout  # noqa: F401 (kv.attention_layout, as callers know it)
from . import state_cache
from .sampling import check_logits


def new_cache(model, rewindable: bool = True) -> DynamicCache:
    """A fresh KV cache for ``model``: a DynamicCache, or the bounded cache a context such as
    ``fastdecode.lambda_attention`` installed on the model (as ``model._fastdecode_new_cache``). A cache with
    recurrent-state layers gets a :class:`~fastdecode.decoding.state_cache.StateLog` (``rewindable``: it can be
    cropped, at the cost of a snapshot of the states before each forward; False for loops that never crop)."""
    factory = getattr(model, "_fastdecode_new_cache", None)
    if factory is not None:
        return factory()
    try:
        cache = DynamicCache(config=model.config)
    except TypeError:  # pragma: no cover - older signature
        return DynamicCache()
    for i, layer in enumerate(cache.layers):
        # full layers: the model's mask applies the window (module docstring); a layer class of a model's own
        # (DeepSeek-V4's compressed attention) is kept
        if type(layer) is DynamicSlidingWindowLayer:
            cache.layers[i] = DynamicLayer()
        elif _HybridSliding is not None and type(layer) is _HybridSliding:
            cache.layers[i] = _HybridFull(number_of_states=layer.number_of_states)
    if any(map(state_cache.is_state_layer, cache.layers)):
        cache._fastdecode_states = state_cache.StateLog(rewindable)
    return cache


def device(model) -> torch.device:
    """Where ``model``'s inputs go. A model dispatched by accelerate (``device_map``, CPU or disk offload)
    reports ``meta`` or its first weight's device as ``model.device``; its hooks know the execution device."""
    if getattr(model, "hf_device_map", None):
        for module in (model.get_input_embeddings(), model):
            dev = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
            if dev is not None:
                return torch.device("cuda", dev) if isinstance(dev, int) else torch.device(dev)
    return model.device


def cache_length(cache) -> int:
    log = getattr(cache, "_fastdecode_states", None)
    return log.length if log is not None else int(cache.get_seq_length())


def crop(cache, length: int) -> None:
    """Keep the first ``length`` positions of every layer. A cache with recurrent-state layers is rewound to a
    snapshot (:mod:`~fastdecode.decoding.state_cache`) and may keep fewer: callers feed ``tokens[cache_length:]``."""
    cur = cache_length(cache)
    if length < 0:
        raise ValueError(f"cannot crop a cache to a negative length ({length})")
    log = getattr(cache, "_fastdecode_states", None)
    if log is not None:
        log.crop(cache, length)
    elif length < cur:
        cache.crop(length - cur)


def select(cache, positions: torch.Tensor) -> None:
    """Keep only the given sequence positions (in that order) of every layer: [n] long."""
    if hasattr(cache, "select_positions"):  # caches with their own layout (fastdecode.attention.LambdaCache)
        cache.select_positions(positions)
        return
    if getattr(cache, "_fastdecode_states", None) is not None:
        raise ValueError("positions cannot be selected from a cache with recurrent-state layers (a draft tree "
                         "is refused for these models)")
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        if isinstance(getattr(layer, "cumulative_length", None), int):
            # a layer that counts positions itself (DynamicSlidingWindowLayer): only while it still holds them all
            if layer.cumulative_length != layer.keys.shape[-2]:
                raise ValueError(f"cannot select positions of a {type(layer).__name__} that dropped old keys; "
                                 "build the cache with fastdecode.decoding.hf_cache.new_cache")
            layer.cumulative_length = int(positions.numel())
        idx = positions.to(layer.keys.device)
        layer.keys = layer.keys.index_select(-2, idx)
        layer.values = layer.values.index_select(-2, idx)
        for name, seq_axis, _ in _EXTRA_PER_POSITION:
            t = getattr(layer, name, None)
            if isinstance(t, torch.Tensor) and t.numel():
                setattr(layer, name, t.index_select(seq_axis, positions.to(t.device)))


# Tensors some cache layers keep per position besides keys and values, as (attribute, sequence axis, batch axis):
# DynamicIndexedLayer (DeepSeek Sparse Attention's indexer: DeepSeek-V3.2, GLM-MoE-DSA, HY-V4, AXK2) appends one
# indexer key per token [B, T, D] (and, for some models, positions [dims, B, T]). Its own crop() cuts them; a
# selection of positions (draft trees) or of rows (batches) must take them too, else the indexer scores keys of
# rejected branches and its key count no longer matches the attention's.
_EXTRA_PER_POSITION = (("indexer_keys", 1, 0), ("indexer_position_ids", -1, 1))


def select_rows(layer, rows: torch.Tensor) -> None:
    """Keep only the batch rows ``rows`` [r] long of one cache layer: its keys and values, any per-position
    state it keeps besides them, and a state layer's recurrent and convolution states."""
    if state_cache.is_state_layer(layer):
        state_cache.select_rows(layer, rows)
    if getattr(layer, "keys", None) is not None and layer.keys.numel():
        layer.keys = layer.keys.index_select(0, rows)
        layer.values = layer.values.index_select(0, rows)
    for name, _, batch_axis in _EXTRA_PER_POSITION:
        t = getattr(layer, name, None)
        if isinstance(t, torch.Tensor) and t.numel():
            setattr(layer, name, t.index_select(batch_axis, rows.to(t.device)))


def permute_columns(layer, first: int, idx: torch.Tensor) -> None:
    """Columns first.. of row r of one cache layer reordered by idx [B, n] (new tensors): keys, values and any
    per-position state."""
    n = idx.shape[1]
    for name in ("keys", "values"):
        t = getattr(layer, name)                                                # [B, H, C, D]
        g = idx.to(t.device)[:, None, :, None].expand(t.shape[0], t.shape[1], n, t.shape[3])
        setattr(layer, name, torch.cat([t[:, :, :first], t[:, :, first:].gather(2, g)], 2))
    for name, seq_axis, batch_axis in _EXTRA_PER_POSITION:
        t = getattr(layer, name, None)
        if not isinstance(t, torch.Tensor) or not t.numel():
            continue
        seq_axis %= t.dim()
        u = t.movedim((batch_axis, seq_axis), (0, 1))                            # [B, C, ...]
        g = idx.to(t.device).view(idx.shape + (1,) * (u.dim() - 2)).expand((u.shape[0], n) + u.shape[2:])
        u = torch.cat([u[:, :first], u[:, first:].gather(1, g)], 1)
        setattr(layer, name, u.movedim((0, 1), (batch_axis, seq_axis)).contiguous())


_CACHE_KWARG: dict = {}   # model class -> the name of its cache argument (a plain dict: torch.compile traces
                          # a lookup in it without the warning an lru_cache wrapper gets)


def _cache_kwarg(model_cls) -> str:
    name = _CACHE_KWARG.get(model_cls)
    if name is None:
        params = inspect.signature(model_cls.forward).parameters
        name = _CACHE_KWARG[model_cls] = "cache" if "cache" in params else "past_key_values"
    return name


def forward(model, input_ids: torch.Tensor, cache, position_ids: torch.Tensor | None = None,
            attention_mask: torch.Tensor | None = None, logits_to_keep: int = 0,
            check_finite: bool = True) -> torch.Tensor:
    """Run the model on ``input_ids`` [B, n] on top of ``cache``; returns float32 logits [B, n', V].

    Position ids default to the positions right after the cache. NaN or +inf logits raise ValueError (a host
    read; check_finite=False for forwards that are recorded or whose caller checks at its own sync).
    """
    if position_ids is None:
        start = cache_length(cache)
        position_ids = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)[None].expand(
            input_ids.shape[0], -1)
    home = device(model)
    if input_ids.device != home:  # sharded models: inputs to the first device
        input_ids, position_ids = input_ids.to(home), position_ids.to(home)
        attention_mask = attention_mask.to(home) if isinstance(attention_mask, torch.Tensor) else (
            {k: v.to(home) for k, v in attention_mask.items()} if attention_mask is not None else None)
    rows = getattr(model, "_fastdecode_input_rows", None)  # set by fastdecode.models.shared_vocab (drafts only)
    if rows is not None:
        input_ids = input_ids.masked_fill(input_ids >= rows, 0)
    kwargs = {_cache_kwarg(type(model)): cache}
    log = getattr(cache, "_fastdecode_states", None)
    if log is not None:
        log.before_forward(cache, input_ids, attention_mask)
    out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                use_cache=True, logits_to_keep=logits_to_keep, **kwargs)
    if log is not None:
        log.after_forward(input_ids.shape[1])
    logits = out.logits
    if logits_to_keep and logits.shape[1] > logits_to_keep:
        # a model whose forward has no logits_to_keep (it lands in **kwargs: TrOCR, ...) returns every position
        logits = logits[:, -logits_to_keep:]
    logits = logits.float().to(home)  # sharded models: logits come from the last device
    if check_finite:
        check_logits(logits)
    return fit_width(logits, getattr(model, "_fastdecode_logits_width", None))


def logits_width(model) -> int:
    """Columns of the logits :func:`forward` returns for ``model``: the width a pair imposes on its draft
    (``models.shared_vocab``), else the model's output size."""
    width = getattr(model, "_fastdecode_logits_width", None)
    return output_size(model) if width is None else width


def output_size(model) -> int:
    """The model's own output size: the rows of its output embedding (else ``config.vocab_size``)."""
    emb = model.get_output_embeddings()
    return int(emb.weight.shape[0]) if emb is not None else int(model.config.vocab_size)


def fit_width(logits: torch.Tensor, width: int | None) -> torch.Tensor:
    """logits [..., V] cut to ``width`` columns or padded with -inf up to it (None: unchanged)."""
    if width is None or logits.shape[-1] == width:
        return logits
    if logits.shape[-1] > width:
        return logits[..., :width]
    pad = logits.new_full(logits.shape[:-1] + (width - logits.shape[-1],), float("-inf"))
    return torch.cat([logits, pad], -1)
