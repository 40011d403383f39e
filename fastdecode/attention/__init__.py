"""Lambda-shaped attention (LM-Infinite) for long-context decoding of RoPE models in bounded memory.

``LambdaAttention(window, num_global)`` is the config; ``with lambda_attention(model, cfg):`` switches a
model to it (plain forwards, prefill, and every fastdecode decoding loop, which then gets a bounded
``LambdaCache``). See lambda_mask.py for the mask and its math, lambda_cache.py for the cache layout and
context.py for how it plugs into transformers.
"""
from .lambda_cache import LambdaCache
from .context import check_supported, lambda_attention
from .lambda_mask import LambdaAttention

__all__ = ["LambdaAttention", "lambda_attention", "LambdaCache", "check_supported"]
