"""The one place that knows how transformers' KV caches and forward signatures differ between versions.

- transformers 5.17 takes ``past_key_values=``; later releases renamed it ``cache=`` (the old name is
  deprecated). :func:`forward` picks the right keyword once per model class.
- ``DynamicCache.crop(n)``: in 5.17 a positive n was the absolute length to keep; newer releases reject
  positive values and only accept -tokens_to_remove. :func:`crop` always passes the negative form,
  which means the same thing in both.
"""
from __future__ import annotations

import functools
import inspect

import torch
from transformers import DynamicCache


def new_cache(model) -> DynamicCache:
    """A fresh KV cache for ``model``: a DynamicCache, or the bounded cache a context such as
    ``fastdecode.lambda_attention`` installed on the model (as ``model._fastdecode_new_cache``)."""
    factory = getattr(model, "_fastdecode_new_cache", None)
    if factory is not None:
        return factory()
    try:
        return DynamicCache(config=model.config)
    except TypeError:  # pragma: no cover - older signature
        return DynamicCache()


def cache_length(cache) -> int:
    return int(cache.get_seq_length())


def crop(cache, length: int) -> None:
    """Keep the first ``length`` positions of every layer."""
    cur = cache_length(cache)
    if length < 0:
        raise ValueError(f"cannot crop a cache to a negative length ({length})")
    if length < cur:
        cache.crop(length - cur)


def select(cache, positions: torch.Tensor) -> None:
    """Keep only the given sequence positions (in that order) of every layer: [n] long."""
    if hasattr(cache, "select_positions"):  # caches with their own layout (fastdecode.attention.LambdaCache)
        cache.select_positions(positions)
        return
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or layer.keys.numel() == 0:
            continue
        idx = positions.to(layer.keys.device)
        layer.keys = layer.keys.index_select(-2, idx)
        layer.values = layer.values.index_select(-2, idx)


@functools.lru_cache(maxsize=None)
def _cache_kwarg(model_cls) -> str:
    params = inspect.signature(model_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def forward(model, input_ids: torch.Tensor, cache, position_ids: torch.Tensor | None = None,
            attention_mask: torch.Tensor | None = None, logits_to_keep: int = 0) -> torch.Tensor:
    """Run the model on ``input_ids`` [B, n] on top of ``cache``; returns float32 logits [B, n', V].

    Position ids default to the positions right after the cache.
    """
    if position_ids is None:
        start = cache_length(cache)
        position_ids = torch.arange(start, start + input_ids.shape[1], device=input_ids.device)[None].expand(
            input_ids.shape[0], -1)
    kwargs = {_cache_kwarg(type(model)): cache}
    out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                use_cache=True, logits_to_keep=logits_to_keep, **kwargs)
    return out.logits.float()
