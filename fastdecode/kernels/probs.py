"""Logits -> probabilities with temperature, top-k and top-p (the distribution p or q).

``probs_reference`` is the PyTorch definition and the CPU path. Semantics (identical for p and q):
- temperature == 0: one-hot at the argmax (first index on ties, as ``torch.argmax`` and HF greedy).
- top_k > 0: keep the tokens whose scaled logit is >= the k-th largest (ties at the boundary kept).
- top_p < 1: keep the smallest set of most probable tokens whose mass reaches top_p (after top-k),
  i.e. token x is kept iff the mass of tokens strictly more probable than x is < top_p.
- the result is renormalised, float32.
"""
from __future__ import annotations

import torch


def probs_reference(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    # logits: [rows, V] -> [rows, V] float32
    if temperature == 0:
        out = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
        return out.scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    x = logits.float() / temperature
    V = x.shape[-1]
    if 0 < top_k < V:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    probs = torch.softmax(x, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = torch.sort(probs, dim=-1, descending=True)
        before = torch.cumsum(sorted_p, dim=-1) - sorted_p  # mass strictly ahead in the order
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, idx, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs
