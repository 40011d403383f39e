"""Hot per-token work. Each kernel file holds a Triton kernel (built on first use by its cached
``_kernel()``), its host function and a PyTorch ``*_reference`` that is also the CPU path. The functions
here are the one dispatch the rest of the package calls: Triton on CUDA tensors (when triton is
installed), the reference elsewhere.

Set the environment variable ``FASTDECODE_KERNELS=reference`` to force the PyTorch references on CUDA
too (for A/B comparisons). The verify functions take their noise as inputs (see kernels/verify.py):
``u`` uniforms [N, k] for the acceptance tests, ``noise`` exponential(1) draws [N, V] for the residual.
"""
from __future__ import annotations

import functools
import os

import torch

from .entropy import entropy_reference
from .lambda_decode import lambda_decode_reference
from .optimal_select import optimal_select_reference
from .probs import probs_reference
from .verify import verify_kseq_reference, verify_rrs_reference, verify_speculative_reference


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(t: torch.Tensor) -> bool:
    """True when ``t`` lives on a CUDA device, triton imports and the references are not forced."""
    return t.is_cuda and os.environ.get("FASTDECODE_KERNELS", "auto") != "reference" and triton_available()


def probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
          check_finite: bool = True, **warpers) -> torch.Tensor:
    """Logits [rows, V] -> probabilities [rows, V] float32 (see kernels/probs.py for the semantics; ``warpers``:
    min_p, typical_p, epsilon_cutoff, eta_cutoff, the reference's only: the kernel has none).

    Never returns NaN: logits holding NaN or +inf (a model that overflowed, e.g. in float16) raise a
    ValueError, and a temperature so small that logits / temperature overflows float32 is handled by
    subtracting each row's max logit first (the limit is greedy decoding).
    check_finite=False skips that check (it reads the result back to the host, a sync): for callers that
    check finiteness themselves at their one sync per step (the static engine)."""
    # The Triton kernel (kernels/probs.py) is not dispatched: measured on an H200 (bench/kernels.py), plain
    # temperature softmax took 53 / 19 / 20 us at 1 / 8 / 64 rows of V = 32000 against 16 / 17 / 21 us for
    # this reference, 72 / 74 / 89 against 45 / 48 / 90 us at V = 151936 (its launch costs more than the
    # reference's work), and top-k / top-p 2.1 ms against 0.26 ms. It stays for its tests and the benchmark.
    out = probs_reference(logits, temperature, top_k, top_p, **warpers)
    if check_finite and temperature > 0 and not bool(torch.isfinite(out).all()):
        out = _probs_overflow(logits, temperature, top_k, top_p, **warpers)
    return out


NON_FINITE = ("the model returned NaN or +inf logits, so there is no distribution to sample from "
              "(a float16 overflow? try float32 or bfloat16)")


def _probs_overflow(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, **warpers) -> torch.Tensor:
    x = logits.float()
    if torch.isnan(x).any() or (x == float("inf")).any():
        raise ValueError(NON_FINITE)
    m = x.amax(-1, keepdim=True)
    if (m == float("-inf")).any():
        raise ValueError("the model returned a row of logits that are all -inf: every token is masked")
    scaled = ((x - m).double() / temperature).float()  # <= 0: no overflow to +inf (T may be below float32's range)
    out = probs_reference(scaled, 1.0, top_k, top_p, **warpers)
    if not bool(torch.isfinite(out).all()):  # pragma: no cover - (x - m) / T cannot produce NaN
        raise ValueError(f"temperature {temperature!r} gives no valid distribution for these logits")
    return out


def entropy(logits: torch.Tensor, unit: str = "bits") -> torch.Tensor:
    """Entropy of softmax(logits) per row, before temperature, in bits (or "nats"): [rows, V] -> [rows]."""
    if use_triton(logits):
        from .entropy import entropy as entropy_triton

        return entropy_triton(logits, unit)
    return entropy_reference(logits, unit)


def verify_speculative(p, q, drafts, u, noise) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-draft speculative verification with given noise. p, q: [N, V]; drafts: [N, 1]; u: [N];
    noise: [N, V]. Returns (tokens [N] long, index [N] long: 0 accepted, -1 residual)."""
    if use_triton(p):
        from .verify import verify_speculative as fused

        return fused(p, q, drafts, u, noise)
    return verify_speculative_reference(p, q, drafts, u, noise)


def verify_rrs(p, q, drafts, u, noise, replacement: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Recursive rejection sampling with (or without) replacement; drafts, u: [N, k] in draw order.
    Returns (tokens [N], index [N]: accepted draft position, -1 for a residual token)."""
    if use_triton(p):
        from .verify import verify_rrs as fused

        return fused(p, q, drafts, u, noise, replacement)
    return verify_rrs_reference(p, q, drafts, u, noise, replacement)


def verify_kseq(p, q, drafts, u, noise, rho) -> tuple[torch.Tensor, torch.Tensor]:
    """K-SEQ (SpecTr) with a given rho* [N]; drafts, u: [N, k]. Returns (tokens [N], index [N])."""
    if use_triton(p):
        from .verify import verify_kseq as fused

        return fused(p, q, drafts, u, noise, rho)
    return verify_kseq_reference(p, q, drafts, u, noise, rho)


def optimal_select(ranks, u, ell, own, first, last, base, cum, left, right, xs, xd) -> torch.Tensor:
    """The OT-optimal verifier's per-draft race selection: [N] winner index (see kernels/optimal_select.py)."""
    if use_triton(ranks):
        from .optimal_select import optimal_select as fused

        return fused(ranks, u, ell, own, first, last, base, cum, left, right, xs, xd)
    return optimal_select_reference(ranks, u, ell, own, first, last, base, cum, left, right, xs, xd)


def lambda_decode(q, q_far, k, v, k_glob, kpos, qpos, window: int, num_global: int, scaling: float) -> torch.Tensor:
    """One Lambda-attention decode step: [B, H, D] (see kernels/lambda_decode.py)."""
    if use_triton(q):
        from .lambda_decode import lambda_decode as fused

        return fused(q, q_far, k, v, k_glob, kpos, qpos, window, num_global, scaling)
    return lambda_decode_reference(q, q_far, k, v, k_glob, kpos, qpos, window, num_global, scaling)


__all__ = [
    "probs", "entropy", "verify_speculative", "verify_rrs", "verify_kseq", "optimal_select", "lambda_decode",
    "use_triton", "triton_available", "probs_reference", "entropy_reference", "verify_speculative_reference",
    "verify_rrs_reference", "verify_kseq_reference", "optimal_select_reference", "lambda_decode_reference",
]
