"""Plain autoregressive decoding with a KV cache: the baseline every other method is measured against."""
from __future__ import annotations

import torch

from ..config import SamplingConfig
from ..stats import DecodeStats
from . import hf_cache as kv
from . import sampling as sm
from .stream import TokenStream


def decode(target, draft, stream: TokenStream, sampling: SamplingConfig, cfg, generator, stats: DecodeStats,
           progress=None) -> None:
    """draft and cfg are unused (the one decode signature of every method)."""
    device = kv.device(target)
    cache = kv.new_cache(target, rewindable=False)
    while not stream.done:
        start = kv.cache_length(cache)
        ids = torch.tensor([stream.tokens[start:]], device=device)
        logits = kv.forward(target, ids, cache, logits_to_keep=1)[0]
        stats.target_calls += 1
        kept = stream.append([sm.next_token(stream.process(logits), sampling, generator)])
        if progress is not None:
            progress.update(kept)
