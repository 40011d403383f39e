"""The static engine (``cache_implementation="static"``): autoregressive, single-draft speculative and
prompt-lookup decoding on preallocated caches, with every forward of a fixed shape replayed from a
recording (multi-draft trees: :mod:`fastdecode.decoding.static_tree`).

One speculative step, all on the device until its single host sync:
1. the draft proposes g tokens, one recorded one-token forward each, sampled on the device (no sync);
2. the target scores [last token, x_1..x_g] padded to a bucket length (a few recorded shapes serve
   every draft length) in one forward at slots L-1 .. ;
3. the verifier runs on the device: greedy compares argmaxes; the token rule tests u * q(x) < p(x) for
   every row at once, draws every row's residual (fused kernel on CUDA) and the bonus, and picks the
   next token by the accepted count n; block verification uses its batched form;
4. ONE host read brings back (n, drafts, next token); the caches need no rollback: slots past the
   committed length are hidden by the mask and overwritten by the next step.

The adaptive length (+2 after a fully accepted draft, -1 otherwise) and the confidence stop behave as in
the dynamic engine. The stop reads each draft token's confidence on the host, one sync per draft token;
on CUDA that costs more than it saves (measured on an H200: 1420 against 1664 tok/s greedy, 737 against
849 at T = 1, where computing the drafts and discarding the unconfident ones was worse still), so there
``generate`` turns the stop off unless ``confidence_threshold`` is given.
"""
from __future__ import annotations

import torch

from .. import kernels
from ..config import SamplingConfig, SpeculativeConfig
from ..stats import DecodeStats
from ..verification.block import verify_block_batched
from ..verification.primitives import sample
from . import hf_cache as kv
from . import sampling as sm
from .stream import TokenStream
from .policy import policy_for
from .static_cache import runner_for
from .static_lambda import lambda_runner_for

TINY_TEMPERATURE = 1e-30  # below this, logits / T overflows float32: the greedy limit is used


def bucket(n: int) -> int:
    """The recorded length that serves an n-token forward: the next power of two."""
    return 1 << max(0, n - 1).bit_length()


def runner(model, capacity: int, mode: str, longest: int):
    """The model's static runner: its slot cache of ``capacity`` slots, or under Lambda attention the ring
    runner sized by ``longest``, the longest forward the loop makes (not by the capacity)."""
    if getattr(model, "_fastdecode_lambda", None) is not None:
        return lambda_runner_for(model, longest, mode)
    return runner_for(model, capacity, mode)


def padded(run, n: int) -> int:
    """The length an n-token forward of ``run`` is padded to: its bucket when forwards are recorded (a few
    shapes serve every step); n itself for plain (eager) forwards, where padding would only add compute
    (on the CPU the target's verify forward costs about its token count)."""
    return n if run.mode == "eager" else bucket(n)


def capacity_for(prompt_len: int, max_new_tokens: int, longest_forward: int) -> int:
    """Cache slots for a whole generation (rounded up to 128 so that similar calls share the graphs)."""
    need = prompt_len + max_new_tokens + longest_forward
    return -(-need // 128) * 128


def feed(run, seq: torch.Tensor, pad: torch.Tensor, start: int, n: int) -> int:
    """Score the committed tokens ``seq[start : start + n]`` at slots start .. (logits unused), each forward
    padded to its bucket; in pieces of at most ``run.max_forward`` tokens (a static Lambda cache takes
    no longer forward). Returns the number of forwards."""
    step = run.max_forward or n
    for a in range(0, n, step):
        m = min(step, n - a)
        run.forward(torch.cat([seq[start + a : start + a + m], pad[: padded(run, m) - m]])[None], start + a, keep=1)
    return -(-n // step)


def _sampling(sampling: SamplingConfig) -> SamplingConfig:
    if 0 < sampling.temperature < TINY_TEMPERATURE:
        return SamplingConfig(0.0, sampling.top_k, sampling.top_p)
    return sampling


def _raise_non_finite() -> None:
    raise ValueError("the model returned NaN or +inf logits, so there is no distribution to sample from "
                     "(a float16 overflow? try float32 or bfloat16)")


def _verify(logits, qs, x, sampling: SamplingConfig, verifier: str, generator):
    """Chain verification on the device. logits [g + 1, V]; qs: the draft rows (a list of [1, V], or one
    [g, V] tensor; unused when greedy); x [g]. Returns device tensors (n accepted, next token, all finite):
    greedy compares argmaxes; the token rule tests u * q(x) < p(x) for every row at once, draws every
    row's residual (fused kernel on CUDA) and the bonus, and picks the next token by n; block verification
    uses its batched form."""
    g, device = x.shape[0], logits.device
    finite = sm.all_finite(logits, *qs) if isinstance(qs, list) else sm.all_finite(logits)
    if sampling.greedy:
        t = logits.argmax(-1)                                          # [g + 1]
        n = (t[:g] == x).long().cumprod(0).sum()
        return n, t[n], finite
    p = sm.probs(logits, sampling, check_finite=False)                 # [g + 1, V]
    q = torch.cat(qs) if isinstance(qs, list) else qs                  # [g, V]
    if verifier == "block":
        n, nxt = verify_block_batched(p[None], q[None], x[None], generator)
        n, nxt = n[0], nxt[0]
    else:
        # the acceptance tests of every row at once (gathers only); then ONE exponential row serves the one
        # draw the step needs: the residual at the first rejected row r = n (the kernel repeats that row's
        # rejecting test), or the bonus from p[g] when all g drafts were accepted. Same random draws in the
        # same order as the dynamic engine's token verifier (u [g], then one noise row), so a seed gives the
        # same tokens on both engines; drawing noise for every row would cost 2g + 1 rows of V per step.
        u = torch.rand(g, generator=generator, device=device, dtype=torch.float64)
        px = p[:g].gather(1, x[:, None])[:, 0].double()
        qx = q.gather(1, x[:, None])[:, 0].double()
        n = ((u * qx < px) & (qx > 0)).long().cumprod(0).sum()
        noise = torch.empty((1, p.shape[1]), dtype=torch.float32, device=device).exponential_(generator=generator)
        r = n.clamp(max=g - 1).view(1)
        res, _ = kernels.verify_speculative(p.index_select(0, r), q.index_select(0, r), x.index_select(0, r)[:, None],
                                            u.index_select(0, r), noise)
        bonus = (p[g:].float() / noise).argmax(-1)                     # [1], as primitives.sample draws it
        nxt = torch.where(n < g, res[0], bonus[0])
    return n, nxt, finite & sm.all_finite(p)


def _plain_step(run, last, pos, sampling, generator, stats) -> tuple[torch.Tensor, int]:
    """One target forward on the newest token at slot ``pos``: the next token ([1] on the device, and on
    the host), after the host check that the logits are finite."""
    logits = run.forward(last.view(1, 1), pos)
    stats.target_calls += 1
    tok = sm.next_tokens(logits, sampling, generator, check_finite=False)
    tok_host, finite = torch.stack([tok[0], sm.all_finite(logits).long()]).tolist()
    if not finite:
        _raise_non_finite()
    return tok, tok_host


def decode_autoregressive(target, draft, stream: TokenStream, sampling: SamplingConfig, cfg, generator,
                          stats: DecodeStats, progress=None, mode: str = "eager") -> None:
    sampling = _sampling(sampling)
    prompt = torch.tensor([stream.tokens], device=kv.device(target))
    run = runner(target, capacity_for(stream.length, stream.max_new_tokens, 1), mode, longest=1)
    run.prefill(prompt[:, :-1])
    last, pos = prompt[0, -1:], stream.length - 1
    while not stream.done:
        last, tok_host = _plain_step(run, last, pos, sampling, generator, stats)  # the one sync per token
        kept = stream.append([tok_host])
        if progress is not None:
            progress.update(kept)
        pos += 1


def decode_speculative(target, draft, stream: TokenStream, sampling: SamplingConfig, spec: SpeculativeConfig,
                       generator, stats: DecodeStats, progress=None, mode: str = "eager") -> None:
    sampling = _sampling(sampling)
    device = kv.device(target)
    longest = spec.max_draft_length if spec.adaptive else spec.draft_length
    cap = capacity_for(stream.length, stream.max_new_tokens, bucket(longest + 1))
    trun, drun = (runner(m, cap, mode, longest=bucket(longest + 1)) for m in (target, draft))
    seq = torch.zeros(cap, dtype=torch.long, device=device)  # the committed tokens, on the device
    seq[: stream.length] = torch.tensor(stream.tokens, device=device)
    trun.prefill(seq[None, : stream.length - 1])
    drun.prefill(seq[None, : stream.length - 1])
    pad = torch.zeros(cap, dtype=torch.long, device=device)
    dlen = stream.length - 1   # draft slots holding committed tokens (the target always holds L - 1)
    policy = policy_for(spec, target, draft, "speculative", mode, sampling.greedy)
    early_stop = spec.adaptive and spec.confidence_threshold > 0
    while not stream.done:
        L = stream.length
        last = seq[L - 1 : L]  # the newest committed token: in neither cache yet
        g = policy.next_length(stream.remaining)
        if g <= 0:  # a plain target step
            tok, tok_host = _plain_step(trun, last, L - 1, sampling, generator, stats)
            seq[L : L + 1] = tok
            kept = stream.append([tok_host])
            if progress is not None:
                progress.update(kept)
            stats.record_step(0, 0)
            continue
        first = L - 1  # the draft's first forward: slots first .. L - 1
        if dlen < L - 1:  # committed tokens the draft has not seen (after a full acceptance or plain steps)
            if drun.mode == "eager" and L - dlen <= (drun.max_forward or L):
                first = dlen  # plain forwards: the catch-up rides along with the first draft token's forward
            else:             # recorded forwards keep one-token drafting shapes: catch up on its own
                stats.draft_calls += feed(drun, seq, pad, dlen, L - 1 - dlen)
            dlen = L - 1

        # 1. draft g tokens (no host sync unless the confidence stop is on)
        cur, xs, qs = last, [], []
        for i in range(g):
            if i == 0 and first < L - 1:
                dl = drun.forward(seq[None, first:L], first, keep=1)
            else:
                dl = drun.forward(cur.view(1, 1), L - 1 + i)
            if sampling.greedy:
                x = dl.argmax(-1)
            else:
                q = sm.probs(dl, sampling, check_finite=False)
                x = sample(q, generator)
                qs.append(q)
            xs.append(x)
            cur = x
            if early_stop and i + 1 < g and float(sm.confidence(dl)[0]) < spec.confidence_threshold:
                g = i + 1  # a host sync per draft token: see the module docstring for the CUDA default
                break
        stats.draft_calls += len(xs)
        x = torch.cat(xs)                                              # [g]

        # 2. one target forward over [last, x_1..x_g], padded to its bucket when recorded
        b = padded(trun, g + 1)
        logits = trun.forward(torch.cat([last, x, pad[: b - g - 1]])[None], L - 1)[: g + 1]
        stats.target_calls += 1

        # 3. verification on the device
        n, nxt, finite = _verify(logits, qs, x, sampling, spec.verifier, generator)

        # 4. the one host sync of the step
        vals = torch.cat([torch.stack([n, nxt.to(n.dtype), finite.to(n.dtype)]), x]).tolist()
        n_acc, nxt_host, ok = vals[:3]
        if not ok:
            _raise_non_finite()
        seq[L : L + n_acc] = x[:n_acc]
        seq[L + n_acc : L + n_acc + 1] = nxt.view(1)
        kept = stream.append(vals[3 : 3 + n_acc] + [nxt_host])
        stats.record_step(g, n_acc)
        policy.update(g, n_acc)
        if progress is not None:
            progress.update(kept)
        dlen = L + min(n_acc, g - 1)  # the draft fed last and x_1..x_{g-1}; x_g only if rejected after it
    policy.report(stats)


def decode_prompt_lookup(target, draft, stream: TokenStream, sampling: SamplingConfig, cfg, generator,
                         stats: DecodeStats, progress=None, mode: str = "eager") -> None:
    """``method="prompt_lookup"`` on the static engine: the drafts come from
    :class:`~fastdecode.decoding.prompt_lookup.NgramIndex` on the host (the text is there anyway), q is
    one-hot at each draft, and the target forward and verification are those of :func:`decode_speculative`
    (one host sync per step). No match: a plain one-token step."""
    from .prompt_lookup import NgramIndex, length_policy

    sampling = _sampling(sampling)
    device = kv.device(target)
    longest = cfg.prompt_lookup_num_tokens
    run = runner(target, capacity_for(stream.length, stream.max_new_tokens, bucket(longest + 1)), mode,
                     longest=bucket(longest + 1))
    prompt = torch.tensor([stream.tokens], device=device)
    run.prefill(prompt[:, :-1])
    pad = torch.zeros(bucket(longest + 1), dtype=torch.long, device=device)
    index = NgramIndex(cfg.max_matching_ngram_size, cfg.min_matching_ngram_size)
    last = prompt[0, -1:]  # [1] the newest committed token, not in the cache yet
    policy = length_policy(cfg, target, None, mode, sampling.greedy)
    while not stream.done:
        L = stream.length
        g = policy.next_length(stream.remaining)
        proposal = index.propose(stream.tokens, g) if g > 0 else []
        g = len(proposal)
        if g == 0:
            last, tok_host = _plain_step(run, last, L - 1, sampling, generator, stats)
            kept = stream.append([tok_host])
            stats.record_step(0, 0)
            if progress is not None:
                progress.update(kept)
            continue
        x = torch.tensor(proposal, dtype=torch.long, device=device)
        b = padded(run, g + 1)
        logits = run.forward(torch.cat([last, x, pad[: b - g - 1]])[None], L - 1)[: g + 1]
        stats.target_calls += 1
        q = None if sampling.greedy else sm.one_hot(x, logits.shape[-1])
        n, nxt, finite = _verify(logits, q, x, sampling, cfg.verifier, generator)
        n_acc, nxt_host, ok = torch.stack([n, nxt.to(n.dtype), finite.to(n.dtype)]).tolist()  # the one sync
        if not ok:
            _raise_non_finite()
        kept = stream.append(proposal[:n_acc] + [nxt_host])
        stats.record_step(g, n_acc)
        if progress is not None:
            progress.update(kept)
        last = nxt.view(1)
        policy.update(g, n_acc)
    policy.report(stats)
