"""Shared pieces of the verifiers: the result type, input validation and sampling helpers."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class VerifyResult:
    tokens: torch.Tensor       # [N] long, the emitted token of each row
    accepted: torch.Tensor     # [N] bool, True when the emitted token is one of the drafts
    draft_index: torch.Tensor  # [N] long, index of the accepted draft in draw order, -1 for a residual
    lossy: bool = False


def check_distributions(p: torch.Tensor, q: torch.Tensor, atol: float | None = None) -> None:
    """Raise ValueError unless p and q are [N, V] tensors of probability rows with matching shapes."""
    for name, t in (("p", p), ("q", q)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name} must be a [N, V] tensor, got {getattr(t, 'shape', type(t))}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape [N, V], got p {tuple(p.shape)} and q {tuple(q.shape)}")
    if p.shape[1] == 0:
        raise ValueError("p and q have an empty vocabulary (V = 0)")
    if atol is None:  # float32-normalised rows stored in float64 are off by ~1e-7; bfloat16 keeps 8 bits
        atol = {torch.float16: 1e-2, torch.bfloat16: 1e-2, torch.float32: 1e-3}.get(p.dtype, 1e-6)
    for name, t in (("p", p), ("q", q)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf")
        if (t < 0).any():
            raise ValueError(f"{name} has negative entries: not a probability distribution")
        s = t.double().sum(-1)
        row_tol = atol * max(1, t.shape[1] ** 0.5 / 10)
        bad = (s - 1).abs() > row_tol
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"row {i} of {name} sums to {float(s[i]):.12g}, not 1 (tolerance {row_tol:.2g} for "
                             f"{t.dtype}): pass normalised probabilities, not logits")


def check_drafts(drafts: torch.Tensor, n_rows: int, vocab: int, k: int | None = None) -> None:
    if not isinstance(drafts, torch.Tensor) or drafts.dim() != 2 or drafts.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"drafts must be an integer tensor [N, k], got {getattr(drafts, 'shape', type(drafts))}")
    if drafts.shape[0] != n_rows:
        raise ValueError(f"drafts has {drafts.shape[0]} rows but p and q have {n_rows}")
    if drafts.shape[1] < 1:
        raise ValueError("drafts must hold at least one draft per row (k >= 1)")
    if k is not None and drafts.shape[1] != k:
        raise ValueError(f"this method needs exactly k = {k} drafts per row, got {drafts.shape[1]}")
    if drafts.numel() and (int(drafts.min()) < 0 or int(drafts.max()) >= vocab):
        raise ValueError(f"draft token ids must lie in [0, {vocab})")


def sample(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token per row from unnormalised nonnegative weights [N, V] (exponential race:
    argmax w / E with E ~ Exp(1) i.i.d. picks x with probability w(x) / sum w)."""
    noise = torch.empty(probs.shape, dtype=torch.float32, device=probs.device).exponential_(generator=generator)
    return (probs.float() / noise).argmax(-1)


def normalize_or(r: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """Normalise nonnegative residual rows r [N, V]; rows with no mass (up to rounding) use ``fallback``."""
    empty = r.sum(-1, keepdim=True) <= 1e-12 * r.shape[-1]
    r = torch.where(empty, fallback, r)
    return r / r.sum(-1, keepdim=True)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """norm(max(0, p - q)) row-wise, falling back to p where the residual has no mass (p == q up to rounding)."""
    return normalize_or((p - q).clamp_min(0), p)


def uniform(n: int, generator: torch.Generator | None, device, dtype=torch.float64) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device, dtype=dtype)


def kernel_noise(p: torch.Tensor, k: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The random draws of the fused verify kernels (fastdecode.kernels.verify_*): uniforms u [N, k]
    (float64) for the acceptance tests and exponential(1) noise [N, V] (float32) for the residual race."""
    u = torch.rand((p.shape[0], k), generator=generator, device=p.device, dtype=torch.float64)
    noise = torch.empty(p.shape, dtype=torch.float32, device=p.device).exponential_(generator=generator)
    return u, noise


def kernel_result(tokens: torch.Tensor, index: torch.Tensor) -> VerifyResult:
    """VerifyResult of a fused verify kernel: ``index`` is the accepted draft (draw order) or -1."""
    return VerifyResult(tokens, index >= 0, index)
