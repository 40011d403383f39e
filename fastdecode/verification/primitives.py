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


FLOAT32_EPS = float(torch.finfo(torch.float32).eps)


def row_sum_tolerance(dtype: torch.dtype, vocab: int) -> float:
    """How far from 1 a probability row of ``vocab`` entries stored in ``dtype`` may sum.

    Two rounding sources, each bounded: storing every entry in ``dtype`` moves each by at most half an
    ulp of itself, so the row sum by at most ``eps(dtype) / 2``; the softmax normaliser (a sum of V
    terms, accumulated in float32 at best) has a relative error that grows like ``eps32 * sqrt(V)``
    for rounding errors of random sign. The tolerance is ``eps(dtype) + 8 * eps32 * sqrt(V)``: float32
    gives 2.4e-6 at V = 6, 8.7e-5 at V = 8192 and 3.7e-4 at V = 152064 (a row summing to 1.03 is
    rejected); bfloat16 gives about 7.8e-3. float64 uses the float32 term too, since float64 rows are
    often float32 probabilities cast up.
    """
    eps = float(torch.finfo(dtype).eps) if dtype.is_floating_point else FLOAT32_EPS
    return eps + 8 * FLOAT32_EPS * max(1, vocab) ** 0.5


def check_distributions(p: torch.Tensor, q: torch.Tensor, atol: float | None = None) -> None:
    """Raise ValueError unless p and q are [N, V] tensors of probability rows with matching shapes.

    Each row must sum to 1 within ``atol`` (default :func:`row_sum_tolerance`). Results computed from
    rows accepted here can exceed [0, 1] by that much, so the public acceptance functions clamp them.
    """
    for name, t in (("p", p), ("q", q)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor [N, V] of probabilities, got {type(t).__name__}")
        if t.dim() != 2:
            hint = f" (for one distribution pass {name}[None])" if t.dim() == 1 else ""
            raise ValueError(f"{name} must be a [N, V] tensor, got shape {tuple(t.shape)}{hint}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape [N, V], got p {tuple(p.shape)} and q {tuple(q.shape)}")
    if p.shape[1] == 0:
        raise ValueError("p and q have an empty vocabulary (V = 0)")
    for name, t in (("p", p), ("q", q)):
        t = t.detach()
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf")
        if (t < 0).any():
            raise ValueError(f"{name} has negative entries: not a probability distribution")
        s = t.double().sum(-1)
        row_tol = row_sum_tolerance(t.dtype, t.shape[1]) if atol is None else atol
        bad = (s - 1).abs() > row_tol
        if bad.any():
            i = int(bad.nonzero()[0])
            raise ValueError(f"row {i} of {name} sums to {float(s[i]):.12g}, not 1 (tolerance {row_tol:.2g} for "
                             f"{t.dtype} at V = {t.shape[1]}): pass normalised probabilities, not logits")


def check_generator(generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


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
