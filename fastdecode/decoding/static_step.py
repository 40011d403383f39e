"""The static engine's speculative step recorded as two CUDA graphs: the whole draft chain, and the verification.

Why: on a GPU a small pair's step is bound by the host. Counted on the CPU with stand-in graphs (g = 4,
T = 1), an unrecorded step of the chain loop dispatches about 90 PyTorch ops besides its forwards (per draft
token: the probabilities, the exponential race, a finiteness check, the runner's input copies; then about 25
for the verification), each several microseconds of host time on a GPU, while plain decoding with
``compile=True`` needed 0.41 ms per token in all on an H200 (``bench/step_time.py``). Recorded, a step queues
about 20 ops: the random draws, the graphs' input copies and three replays (draft chain, target forward,
verification), then its one host read.

- The draft chain (:func:`draft_chain`): g one-token draft forwards, each followed by its token's
  probabilities and its exponential-race draw on the device, recorded together once per (g, sampling
  settings). The noise of the g draws is drawn before the replay in ONE call of g rows (outside the graph:
  no random state is recorded); the forwards advance the shared ``start`` slot inside the graph and put it
  back at the end.
- The verification (:func:`verify_recorded`): :func:`decide`, the same function the unrecorded step runs,
  recorded once per (g, sampling settings) with its uniforms and its noise row as inputs, drawn before the
  replay.

The draws are the unrecorded step's, in the same order: g noise rows for the drafts (on the CPU one call
of g rows gives exactly the numbers of g calls of one row, so the CPU stand-in tests compare seeds with the
dynamic engine), then the g uniforms of the tests, then one noise row for the residual or the bonus.

Used when both runners record (CUDA graphs: ``compile=None`` or ``True`` on CUDA), the draft is a model
(not n-gram proposals), the confidence stop is off (its host read per draft token cannot be recorded), the
rule is greedy or the token verifier (block verification draws inside its batched form: unrecorded), and the
logits processors, if any, are the repetition penalty, one-token bans and the minimum length
(:class:`~fastdecode.decoding.dense_rules.DenseRules`: applied inside both graphs from the committed text's
id mask and new-token count, which are graph inputs; the other processors read the text on the host).
"""
from __future__ import annotations

import dataclasses

import torch

from .. import kernels
from ..config import SamplingConfig
from ..verification.block import verify_block_batched
from . import hf_cache as kv
from . import sampling as sm


def recordable(drun, trun, sampling: SamplingConfig, verifier: str, threshold: float, prefix=None) -> bool:
    """Whether a draft-model step runs recorded (see the module docstring); ``prefix``: the stream's processors'
    state (None: no processors)."""
    return (drun is not None and drun.records and trun.records and threshold <= 0
            and (sampling.greedy or verifier != "block") and (prefix is None or prefix.rules is not None))


def _settings(sampling: SamplingConfig) -> tuple:
    return dataclasses.astuple(sampling)


def draft_chain(drun, last: torch.Tensor, start: int, g: int, sampling: SamplingConfig, generator, prefix=None):
    """The draft model's g tokens after ``last`` [1] (at slot ``start``), from one recorded graph. Returns (x [g]
    long, and q [g, V] float32 when sampling, else the g logits the drafts were chosen by, for the NaN / +inf
    check): the graph's own tensors, rewritten by the next replay of this chain. ``prefix``: the stream's
    processors' state; its dense rules process each draft row inside the graph."""
    drun.recording_at(start, g)
    drun.lengths.add(1)
    settings = _settings(sampling)
    fwd = drun.step_forward()
    cache = drun.cache
    width = kv.logits_width(drun.model)
    rules = prefix.rules if prefix is not None else None
    extra, cols = (prefix.dense_inputs(width), rules.columns(width)) if rules is not None else ((), None)

    def chain(ids: torch.Tensor, noise: torch.Tensor | None = None, seen=None, new=None):
        cur, xs, outs = ids.view(1, 1), [], []
        for i in range(g):
            logits = fwd(cur)                                     # [1, V] at slot start + i
            cache.start.add_(1)
            if rules is not None:   # row i's text: the committed one, then x_1..x_i
                logits = rules.apply(logits, seen[None], new + i, cols)
            if sampling.greedy:
                x = logits.argmax(-1)
                outs.append(logits.gather(-1, x[:, None])[:, 0])
            else:
                q = sm.probs(logits, sampling, check_finite=False)
                x = (q / noise[i : i + 1]).argmax(-1)              # primitives.sample with this row's noise
                outs.append(q)
            xs.append(x)
            cur = x.view(1, 1)
            if rules is not None and i + 1 < g:
                seen = rules.with_token(seen, x)
        cache.start.sub_(g)                                       # as found: warm-up calls and replays alike
        return torch.cat(xs), torch.cat(outs)

    key = ("draft_chain", g) + settings + ((rules.key,) if rules is not None else ())
    if sampling.greedy:
        return drun.replay(key, lambda ids, *rest: chain(ids, None, *rest), last, *extra)
    noise = torch.empty((g, width), dtype=torch.float32, device=last.device).exponential_(generator=generator)
    return drun.replay(key, chain, last, noise, *extra)


def verify_recorded(trun, logits: torch.Tensor, q: torch.Tensor, x: torch.Tensor, sampling: SamplingConfig,
                    generator, prefix=None):
    """:func:`decide` (greedy or the token rule) from one recorded graph of the target runner: its random
    draws made first, in the unrecorded order. Returns its :func:`packed` verdict, the graph's own tensor:
    read it before the next step. ``prefix``: the stream's processors' state; its dense rules process the
    target's rows (``logits`` raw, then) inside the graph."""
    g, settings = x.shape[0], _settings(sampling)
    rules = prefix.rules if prefix is not None else None
    extra, cols = (prefix.dense_inputs(logits.shape[1]), rules.columns(logits.shape[1])) if rules is not None \
        else ((), None)
    key = ("verify", g) + settings + ((rules.key,) if rules is not None else ())

    def processed(lg, xx, rest):
        return rules.chain(lg, *rest, xx, cols) if rules is not None else lg

    if sampling.greedy:
        out = trun.replay(key, lambda lg, qq, xx, *rest: packed(decide(processed(lg, xx, rest), qq, xx, sampling,
                                                                       "token")),
                          logits, q, x, *extra)
    else:
        u = torch.rand(g, generator=generator, device=logits.device, dtype=torch.float64)
        noise = torch.empty((1, logits.shape[1]), dtype=torch.float32, device=logits.device).exponential_(
            generator=generator)
        out = trun.replay(key, lambda lg, qq, xx, uu, nn, *rest: packed(decide(processed(lg, xx, rest), qq, xx,
                                                                               sampling, "token", u=uu, noise=nn)),
                          logits, q, x, u, noise, *extra)
    return out


def packed(result) -> torch.Tensor:
    """:func:`decide`'s (n, next token, all finite) as one long tensor [3], for the step's one host read."""
    n, nxt, finite = result
    return torch.stack([n, nxt.to(n.dtype), finite.to(n.dtype)])


def decide(logits, q, x, sampling: SamplingConfig, verifier: str, generator=None, u=None, noise=None,
           check_q: bool = True):
    """Chain verification on the device. logits [g + 1, V]; q: the draft rows [g, V] (when greedy: the draft
    logits the drafts were chosen by [g], only checked for NaN / +inf; ``check_q`` False: q is not checked,
    one-hot n-gram rows); x [g]. Returns device tensors (n accepted, next token, all finite):
    greedy compares argmaxes; the token rule tests u * q(x) < p(x) for every row at once, then draws the
    residual at the first rejection or the bonus (``u`` [g] float64 and ``noise`` [1, V]: given, or drawn
    here in that order from ``generator``); block verification uses its batched form (its own draws)."""
    g, device = x.shape[0], logits.device
    finite = sm.all_finite(logits, q) if check_q else sm.all_finite(logits)
    if sampling.greedy:
        t = logits.argmax(-1)                                          # [g + 1]
        n = (t[:g] == x).long().cumprod(0).sum()
        return n, t.index_select(0, n.view(1))[0], finite   # (t[n] would read n on the host)
    p = sm.probs(logits, sampling, check_finite=False)                 # [g + 1, V]
    if verifier == "block":
        n, nxt = verify_block_batched(p[None], q[None], x[None], generator)
        return n[0], nxt[0], finite & sm.all_finite(p)
    # the acceptance tests of every row at once (gathers only); then ONE exponential row serves the one
    # draw the step needs: the residual at the first rejected row r = n (the kernel repeats that row's
    # rejecting test), or the bonus from p[g] when all g drafts were accepted. Same random draws in the
    # same order as the dynamic engine's token verifier (u [g], then one noise row), so a seed gives the
    # same tokens on both engines; drawing noise for every row would cost 2g + 1 rows of V per step.
    if u is None:
        u = torch.rand(g, generator=generator, device=device, dtype=torch.float64)
    px = p[:g].gather(1, x[:, None])[:, 0].double()
    qx = q.gather(1, x[:, None])[:, 0].double()
    n = accepted_count(u, px, qx)
    if noise is None:
        noise = torch.empty((1, p.shape[1]), dtype=torch.float32, device=device).exponential_(generator=generator)
    r = n.clamp(max=g - 1).view(1)
    res, _ = kernels.verify_speculative(p.index_select(0, r), q.index_select(0, r), x.index_select(0, r)[:, None],
                                        u.index_select(0, r), noise)
    bonus = (p[g:].float() / noise).argmax(-1)                         # [1], as primitives.sample draws it
    nxt = torch.where(n < g, res[0], bonus[0])
    return n, nxt, finite & sm.all_finite(p)


def accepted_count(u: torch.Tensor, px: torch.Tensor, qx: torch.Tensor) -> torch.Tensor:
    """Drafts kept before the first rejection (a device scalar): x_i passes when u_i q(x_i) < p(x_i), q(x_i) > 0."""
    return ((u * qx < px) & (qx > 0)).long().cumprod(0).sum()
