"""Classic speculative sampling (Leviathan et al. ICML'23; Chen et al. 2023), docs/algorithms.md section 1.

For one draft x ~ q: accept x with probability min(1, p(x) / q(x)); otherwise emit a residual token
y ~ norm(max(0, p - q)). The output is exactly p-distributed: min(p, q) + (1 - sum min(p, q)) *
norm(max(0, p - q)) = p. Acceptance probability: sum_x min(p(x), q(x)).

The test and the residual sample run through fastdecode.kernels.verify_speculative with the same random
draws (u, then the residual race's exponential noise): fused in one Triton kernel on CUDA, its PyTorch
reference elsewhere, so a seed gives the same tokens on either.
"""
from __future__ import annotations

import torch

from .. import kernels
from .primitives import VerifyResult, kernel_result, sample, uniform


def verify_speculative(p, q, drafts, generator=None) -> VerifyResult:
    # p, q: [N, V]; drafts: [N, 1]
    x = drafts[:, 0].long()
    u = uniform(x.shape[0], generator, p.device)
    noise = torch.empty(p.shape, dtype=torch.float32, device=p.device).exponential_(generator=generator)
    return kernel_result(*kernels.verify_speculative(p, q, x[:, None], u, noise))


def acceptance_speculative(p, q, k: int = 1):
    return torch.minimum(p, q).sum(-1)


def verify_chain(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, generator=None) -> tuple[int, int]:
    """Token-by-token verification of one drafted chain.

    p: [gamma + 1, V] target distributions after each prefix; q: [gamma, V] draft distributions the
    drafts were sampled from; drafts: [gamma]. Returns (number of accepted drafts n, next token): the
    residual at position n when n < gamma, else the bonus token from p[gamma].
    """
    gamma = drafts.shape[0]
    x = drafts.long()
    px = p[:gamma].gather(1, x[:, None])[:, 0].double()
    qx = q.gather(1, x[:, None])[:, 0].double()
    u = uniform(gamma, generator, p.device)
    ok = (u * qx < px) & (qx > 0)
    n = int(ok.long().cumprod(0).sum()) if gamma else 0
    if n == gamma:
        nxt = sample(p[gamma : gamma + 1], generator)
    else:  # the residual through the kernel dispatch: it repeats row n's (rejecting) test
        noise = torch.empty((1, p.shape[1]), dtype=torch.float32, device=p.device).exponential_(generator=generator)
        # fresh one-row copies: a slice at row n has an n-dependent address alignment, and Triton compiles
        # one kernel variant per alignment class (seconds each, paid inside the decode loop)
        nxt, _ = kernels.verify_speculative(p[n : n + 1].clone(), q[n : n + 1].clone(), x[n : n + 1, None].clone(),
                                            u[n : n + 1].clone(), noise)
    return n, int(nxt[0])
