"""The shape every multi-draft rule here shares, and one driver that runs it.

A *sequential* rule looks at the drafts x_1..x_k one after another. Given the drafts it fixes
- ``acc`` [N, k]: the probability of accepting x_i when x_1..x_{i-1} were all rejected, and
- ``res`` [N, V]: the distribution of the token emitted when every draft is rejected (the residual).
RRS (with and without replacement), SpecTr's K-SEQ and the greedy-draft verifier all have this form;
each module computes (acc, res) in a ``plan_*`` function, and :func:`run` draws the uniforms.

Given the drafts, the emitted token then has the law (:func:`output_law`)
    sum_i prod_{j<i} (1 - acc_j) acc_i delta_{x_i} + prod_i (1 - acc_i) res,
which is what the exactness tests enumerate. "Accepted" means the emitted token is one of the
drafts (VerifyResult); for the rules above a residual token never equals a rejected draft, except in
the greedy-draft rule, where residual tokens among the deterministic top k-1 drafts count as
accepted by design (docs/algorithms.md section 3).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .primitives import VerifyResult
from .drafts import categorical


class AcceptanceEstimate(NamedTuple):
    """Unbiased Monte Carlo estimate of an acceptance probability: ``mean`` [N] and its standard
    error ``stderr`` [N] (unpacks as a (mean, stderr) pair)."""

    mean: torch.Tensor
    stderr: torch.Tensor


def run(acc: torch.Tensor, res: torch.Tensor, drafts: torch.Tensor, generator=None, lossy: bool = False) -> VerifyResult:
    """Draw one outcome per row: the first i with U_i < acc_i is accepted, otherwise a residual token.
    acc: [N, k] float64; res: [N, V]; drafts: [N, k]."""
    x = drafts.long()
    n, k = x.shape
    u = torch.rand((n, k), generator=generator, device=x.device, dtype=torch.float64)
    hit = u < acc                                                       # [N, k]
    first = torch.where(hit.any(-1), hit.long().argmax(-1), -1)         # [N]
    y = categorical(res, generator, 1)[:, 0]                            # [N]
    tokens = torch.where(first >= 0, x.gather(1, first.clamp_min(0)[:, None])[:, 0], y)
    match = x == tokens[:, None]                                        # a residual token among the drafts
    index = torch.where(first >= 0, first, torch.where(match.any(-1), match.long().argmax(-1), -1))
    return VerifyResult(tokens, index >= 0, index, lossy)


def output_law(acc: torch.Tensor, res: torch.Tensor, drafts: torch.Tensor) -> torch.Tensor:
    """[N, V] exact law of the emitted token given the drafts (see the module docstring)."""
    x = drafts.long()
    reach = torch.cumprod(torch.cat([torch.ones_like(acc[:, :1]), 1 - acc], dim=1), dim=1)   # [N, k+1]
    law = reach[:, -1:] * res.double() / res.double().sum(-1, keepdim=True)
    return law.scatter_add(1, x, reach[:, :-1] * acc)


def accept_given_drafts(acc: torch.Tensor, res: torch.Tensor, drafts: torch.Tensor) -> torch.Tensor:
    """[N] probability, given the drafts, that the emitted token is one of them."""
    x = drafts.long()
    mask = torch.zeros(res.shape, dtype=torch.bool, device=res.device).scatter_(1, x, True)
    law = output_law(acc, res, drafts)
    return (law * mask).sum(-1)
