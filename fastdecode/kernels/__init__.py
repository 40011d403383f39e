"""Hot per-token work. Each kernel file holds a Triton kernel, its host function and a PyTorch
``*_reference`` that is also the CPU path. The functions here are the one dispatch the rest of the
package calls: Triton on CUDA tensors (when triton is installed), the reference elsewhere."""
from __future__ import annotations

import torch

from .entropy import entropy_reference
from .probs import probs_reference


def probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Logits [rows, V] -> probabilities [rows, V] float32 (see kernels/probs.py for the semantics)."""
    return probs_reference(logits, temperature, top_k, top_p)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy in bits of softmax(logits) per row, before temperature: [rows, V] -> [rows]."""
    return entropy_reference(logits)
