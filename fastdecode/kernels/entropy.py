"""Row entropy of softmax(logits), before any temperature, in bits (and nats)."""
from __future__ import annotations

import math

import torch


def entropy_reference(logits: torch.Tensor) -> torch.Tensor:
    # logits: [rows, V] -> [rows] float32, bits
    logp = torch.log_softmax(logits.float(), dim=-1)
    h_nats = -(logp.exp() * logp).nan_to_num(0.0).sum(-1)
    return h_nats / math.log(2.0)
