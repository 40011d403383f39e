"""Logits -> distributions and tokens, on the logits' device and without host syncs.

Temperature, top-k, top-p and min-p are applied identically to p (target) and q (draft) through
``kernels.probs``; a token is drawn by the exponential race (argmax w / E, E ~ Exp(1)), whose noise
comes from the caller's generator on the same device, so a seed fixes the tokens.
"""
from __future__ import annotations

import dataclasses

import torch

from .. import kernels
from ..config import SamplingConfig
from ..verification.primitives import sample  # noqa: F401 (re-exported: the sampler of every loop)


TINY_TEMPERATURE = 1e-30  # below this, logits / T overflows float32: the greedy limit is used


def greedy_limit(sampling: SamplingConfig) -> SamplingConfig:
    """``sampling``, or its greedy limit (temperature 0) for a temperature so small that logits / T overflows
    float32: for loops that call :func:`probs` with check_finite=False, which then cannot fall back to the
    overflow-safe computation (``kernels.probs``: both give the greedy limit)."""
    if 0 < sampling.temperature < TINY_TEMPERATURE:
        return dataclasses.replace(sampling, temperature=0.0)
    return sampling


def probs(logits: torch.Tensor, sampling: SamplingConfig, check_finite: bool = True) -> torch.Tensor:
    """logits [rows, V] -> probabilities [rows, V] float32. check_finite=False: no host sync (the caller
    checks the result at its own sync, see :func:`all_finite`)."""
    return kernels.probs(logits, sampling.temperature, sampling.top_k, sampling.top_p, check_finite=check_finite,
                         **warpers(sampling))


def warpers(sampling: SamplingConfig) -> dict:
    """HF's warpers besides temperature, top-k and top-p (min_p, typical_p, epsilon_cutoff, eta_cutoff, top_h) of
    ``sampling``."""
    return dict(min_p=sampling.min_p, typical_p=sampling.typical_p, epsilon_cutoff=sampling.epsilon_cutoff,
                eta_cutoff=sampling.eta_cutoff, top_h=sampling.top_h)


NON_FINITE = kernels.NON_FINITE   # the one message for NaN or +inf logits, wherever they are found
# where a flag cannot tell the two apart: a distribution that is NaN because processors masked every token
NON_FINITE_OR_MASKED = ("the model returned NaN or +inf logits, or the logits processors masked every token of a "
                        "row (all -inf), so there is no distribution to sample from (a float16 overflow? try "
                        "float32 or bfloat16; or processors that allow no token)")


def non_finite(processed: bool) -> ValueError:
    """The error for a failed finiteness flag; ``processed``: logits processors were applied, so the flag may
    also mean a row they masked whole."""
    return ValueError(NON_FINITE_OR_MASKED if processed else NON_FINITE)


def sampleable(scores: torch.Tensor, sampling: SamplingConfig) -> torch.Tensor:
    """A device bool scalar: every row of (processed) ``scores`` has a token to draw: true when greedy (argmax
    of an all -inf row is token 0, as in HF), else some entry above -inf in each row."""
    if sampling.greedy:
        return torch.ones((), dtype=torch.bool, device=scores.device)
    return (scores > float("-inf")).any(-1).all()


def check_logits(logits: torch.Tensor) -> None:
    """Raise ValueError if ``logits`` hold NaN or +inf (a host sync): greedy decoding would otherwise emit
    argmax(NaN) = an arbitrary token without a word."""
    if not bool(all_finite(logits)):
        raise ValueError(NON_FINITE)


def next_tokens(logits: torch.Tensor, sampling: SamplingConfig, generator, check_finite: bool = True) -> torch.Tensor:
    """One token per row of ``logits`` [rows, V] as a device tensor [rows] (argmax at temperature 0). (NaN or
    +inf logits are caught where they are computed: ``kv.forward``, or the static loops' one sync.)"""
    if sampling.greedy:
        return logits.argmax(-1)
    return sample(probs(logits, sampling, check_finite), generator)


def all_finite(*tensors: torch.Tensor) -> torch.Tensor:
    """A device bool scalar: no entry of any tensor is NaN or +inf (read at the caller's one sync; -inf is a
    masked token's logit, allowed). ``x < inf`` is false exactly for NaN and +inf: one comparison and one
    reduction per tensor (as ``isfinite().all()``)."""
    return torch.stack([(t < float("inf")).all() for t in tensors]).all()


def next_token(logits: torch.Tensor, sampling: SamplingConfig, generator) -> int:
    """One token from ``logits`` [1, V] as a host int (argmax at temperature 0)."""
    return int(next_tokens(logits, sampling, generator)[0])


def one_hot(drafts: torch.Tensor, vocab: int) -> torch.Tensor:
    """q of point-mass drafts (n-gram proposals): [gamma] long -> [gamma, vocab] float32 rows one-hot at each draft."""
    return torch.zeros(drafts.shape[0], vocab, dtype=torch.float32, device=drafts.device).scatter_(
        1, drafts[:, None], 1.0)


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """The top probability of softmax(raw logits) per row [rows] (the adaptive draft's early-stop signal)."""
    return torch.softmax(logits.float(), -1).amax(-1)
