"""Plain autoregressive decoding with a KV cache: the baseline every other method is measured against."""
from __future__ import annotations

import torch

from .. import kernels
from ..config import SamplingConfig
from ..stats import DecodeStats
from ..verification.common import sample
from . import cache as kv
from .common import TokenStream


def next_token(logits: torch.Tensor, sampling: SamplingConfig, generator) -> int:
    """logits [1, V] -> one token id (argmax at temperature 0)."""
    if sampling.greedy:
        return int(logits.argmax(-1)[0])
    p = kernels.probs(logits, sampling.temperature, sampling.top_k, sampling.top_p)
    return int(sample(p, generator)[0])


def decode(target, stream: TokenStream, sampling: SamplingConfig, generator, stats: DecodeStats, progress=None) -> None:
    device = kv.device(target)
    cache = kv.new_cache(target)
    while not stream.done:
        start = kv.cache_length(cache)
        ids = torch.tensor([stream.tokens[start:]], device=device)
        logits = kv.forward(target, ids, cache, logits_to_keep=1)[0]
        stats.target_calls += 1
        kept = stream.append([next_token(logits, sampling, generator)])
        if progress is not None:
            progress.update(kept)
