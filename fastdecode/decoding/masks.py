"""The 4D attention masks of the forwards that bypass transformers' own mask functions (token trees, batches
with invalid columns inside rows, the static engine's slot caches): the additive form transformers takes, a
sliding window applied by position, and the causal mask over rows with invalid columns.
"""
from __future__ import annotations

import torch


def additive(allow: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean ``allow`` [nq, nk] or [B, nq, nk] -> the additive 4D mask [1 | B, 1, nq, nk] on its device: 0 where
    allowed, the dtype's minimum elsewhere."""
    a = allow if allow.dim() == 3 else allow[None]
    return torch.zeros(a.shape, dtype=dtype, device=a.device).masked_fill_(~a, torch.finfo(dtype).min)[:, None]


def with_window(allow: torch.Tensor, qpos: torch.Tensor, kpos: torch.Tensor, window: int | None,
                layer_types: tuple[str, ...] | None, dtype: torch.dtype):
    """The mask(s) of a forward given which keys each query may see (``allow`` [.., nq, nk]) and the positions
    of queries and keys (``qpos`` [.., nq], ``kpos`` [.., nk]). With a sliding ``window`` (the model's own,
    ``attention_layout``), keys ``window`` or more positions behind their query are hidden, the rule of
    transformers' sliding-window masks, applied by position: one mask when every layer is windowed
    (``layer_types`` None), else a dict {layer type: mask} (the form models mixing windowed and full layers
    take)."""
    if window is None:
        return additive(allow, dtype)
    sliding = additive(allow & (qpos[..., :, None] - kpos[..., None, :] < window), dtype)
    if layer_types is None:
        return sliding
    full = additive(allow, dtype)
    return {t: sliding if t == "sliding_attention" else full for t in layer_types}


def row_causal(valid: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """[B, n, W]: query i (at column ``q[i]``) of row b sees the columns ``<= q[i]`` that are valid in that row
    (``valid`` [B, W] bool), and always its own column, so that a padding query with nothing valid before it
    stays finite."""
    cols = torch.arange(valid.shape[1], device=valid.device)
    return ((cols[None, :] <= q[:, None])[None] & valid[:, None, :]) | (cols[None, :] == q[:, None])[None]
