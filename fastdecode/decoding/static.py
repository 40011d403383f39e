"""The static engine (``cache_implementation="static"``): autoregressive, single-draft speculative and
prompt-lookup decoding on preallocated caches, with every forward of a fixed shape replayed from a
recording (multi-draft trees: :mod:`fastdecode.decoding.static_tree`).

One speculative step, all on the device until its single host sync:
1. the draft proposes g tokens, one recorded one-token forward each, sampled on the device (no sync);
2. the target scores [last token, x_1..x_g] padded to a bucket length (a few recorded shapes serve
   every draft length) in one forward at slots L-1 .. ;
3. the verifier runs on the device: greedy compares argmaxes; the token rule tests u * q(x) < p(x) for
   every row at once and makes the one draw the step needs from one exponential row (the residual at
   the first rejection, fused kernel on CUDA, or the bonus); block verification uses its batched form;
4. ONE host read brings back (n, drafts, next token); the caches need no rollback: slots past the
   committed length are hidden by the mask and overwritten by the next step.

The adaptive length (+2 after a fully accepted draft, -1 otherwise) and the confidence stop behave as in
the dynamic engine. The stop reads each draft token's confidence on the host, one sync per draft token;
on CUDA that costs more than it saves (measured on an H200: 1420 against 1664 tok/s greedy, 737 against
849 at T = 1, where computing the drafts and discarding the unconfident ones was worse still), so there
``generate`` turns the stop off unless ``confidence_threshold`` is given.

Prompt lookup runs the same loop with drafts copied from the text (one-hot q) and, when the text has no
match, the draft model's drafts if one is given; the draft catches up on the committed tokens it has not
seen when it next drafts.
"""
from __future__ import annotations

import torch

from ..config import DEFAULT_CONFIDENCE_THRESHOLD, SamplingConfig, SpeculativeConfig
from ..stats import DecodeStats
from ..verification.primitives import sample
from . import hf_cache as kv
from . import sampling as sm
from .stream import TokenStream
from .policy import policy_for
from .static_cache import runner_for
from .static_step import decide, draft_chain, packed, recordable, verify_recorded
from .static_lambda import lambda_runner_for


def bucket(n: int) -> int:
    """The recorded length that serves an n-token forward: the next power of two."""
    return 1 << max(0, n - 1).bit_length()


def runner(model, capacity: int, mode: str, longest: int):
    """The model's static runner: its slot cache of ``capacity`` slots, or under Lambda attention the ring
    runner sized by ``longest``, the longest forward the loop makes (not by the capacity)."""
    if getattr(model, "_fastdecode_lambda", None) is not None:
        return lambda_runner_for(model, longest, mode)
    return runner_for(model, capacity, mode, span=longest)


def padded(run, n: int, most: int) -> int:
    """The length an n-token forward of ``run`` is padded to: its bucket when forwards are recorded (a few
    shapes serve every step); n itself for plain (eager) forwards, where padding would only add compute
    (on the CPU the target's verify forward costs about its token count). Under inductor, where each new
    length costs a compilation (9-10 s per shape for the code pair on an H200, measured in the middle of
    timed runs: a draft cut short by the budget needed a smaller bucket), the shortest length already
    compiled between the bucket and ``most`` (the longest forward the caller's cache has room for), if any,
    when the compiled forwards are recorded as CUDA graphs."""
    if run.mode == "eager":
        return n
    b = bucket(n)
    if run.mode == "inductor" and run.records:   # (on a GPU a few more query rows cost next to nothing)
        have = [m for m in run.lengths if b < m <= most]
        if b not in run.lengths and have:
            return min(have)
    return b


def capacity_for(prompt_len: int, max_new_tokens: int, longest_forward: int) -> int:
    """Cache slots for a whole generation (rounded up to 128 so that similar calls share the graphs)."""
    need = prompt_len + max_new_tokens + longest_forward
    return -(-need // 128) * 128


def feed(run, seq: torch.Tensor, pad: torch.Tensor, start: int, n: int, most: int | None = None) -> int:
    """Score the committed tokens ``seq[start : start + n]`` at slots start .. (logits unused), each forward
    padded to its bucket; in pieces of at most ``run.max_forward`` tokens (a static Lambda cache takes
    no longer forward) and at most ``most`` (a padded piece must fit the capacity). Returns the number of
    forwards."""
    step = min(run.max_forward or n, most or n)
    for a in range(0, n, step):
        m = min(step, n - a)
        b = padded(run, m, min(run.max_forward or bucket(step), bucket(step)))
        run.forward(torch.cat([seq[start + a : start + a + m], pad[: b - m]])[None], start + a, keep=1)
    return -(-n // step)


def _raise_non_finite(processed: bool = False) -> None:
    raise sm.non_finite(processed)


def _plain_steps(run, last, pos: int, k: int, most: int, sampling, generator,
                 process=None) -> tuple[torch.Tensor, list[int]]:
    """k plain target steps after the newest token ``last`` [1] (at slot ``pos``), queued on the device (each
    step's token feeds the next), then ONE host read of their tokens and of one finiteness flag (ValueError on
    NaN / +inf). Each forward is padded as :func:`padded` says (``most``: the longest the cache has room for).
    ``process``: the stream's logits processors (each step's row with the queued tokens before it). Returns the
    k tokens on the device [k] and on the host."""
    b = padded(run, 1, most)
    pad = last.new_zeros(b - 1)   # (made once per read, not per step)
    toks, finite = [], []
    for i in range(k):
        ids = last.view(1, 1) if b == 1 else torch.cat([last, pad])[None]
        logits = run.forward(ids, pos + i)[:1]
        scores = logits if process is None else process(logits, torch.cat(toks) if toks else None)
        last = sm.next_tokens(scores, sampling, generator, check_finite=False)
        toks.append(last)
        finite.append(sm.all_finite(logits) if process is None else
                      sm.all_finite(logits) & sm.sampleable(scores, sampling))
    toks = torch.cat(toks)
    return toks, _read(toks, finite, process is not None)


def _read(toks: torch.Tensor, finite: list[torch.Tensor], processed: bool = False) -> list[int]:
    """The tokens ``toks`` [k] on the host, in ONE read with the device flags ``finite`` (ValueError if one of
    them is false: NaN or +inf logits, or, ``processed``, a row the processors masked whole)."""
    *host, ok = torch.cat([toks, torch.stack(finite).all().long().view(1)]).tolist()
    if not ok:
        _raise_non_finite(processed)
    return host


def _next(scores, sampling, generator, processed: bool = False) -> tuple[torch.Tensor, int]:
    """The token after ``scores`` [1, V] (logits, ``processed`` or not): on the device [1] and on the host (one
    read, which also checks that they are finite and leave a token to draw)."""
    tok = sm.next_tokens(scores, sampling, generator, check_finite=False)
    return tok, _read(tok, [sm.all_finite(scores) & sm.sampleable(scores, sampling)], processed)[0]


QUEUED_STEPS = 8  # plain steps queued on a CUDA device per host read (see decode_autoregressive)


def _queued_steps(run) -> int:
    """How many plain steps run between two host reads: on CUDA the host queues the next steps while the
    device computes (each step's token feeds the next on the device), so the read's round trip is paid once
    per ``QUEUED_STEPS`` tokens; on the CPU, where every op finishes before the next starts, one."""
    return QUEUED_STEPS if run.device.type == "cuda" else 1


def decode_autoregressive(target, draft, stream: TokenStream, sampling: SamplingConfig, cfg, generator,
                          stats: DecodeStats, progress=None, mode: str = "eager") -> None:
    """Plain decoding. Steps are queued ``_queued_steps`` at a time, then one host read brings back their
    tokens and one finiteness flag; tokens past an EOS in that read are computed but dropped (at most
    ``QUEUED_STEPS - 1`` forwards, counted in ``target_calls``; the budget is never overrun). The tokens
    and their random draws are those of one read per token, so a seed gives the same text."""
    sampling = sm.greedy_limit(sampling)
    if stream.done:
        return
    prompt = torch.tensor([stream.tokens], device=kv.device(target))
    run = runner(target, capacity_for(stream.length, stream.max_new_tokens, 1), mode, longest=1)
    last, tok_host = _next(stream.process(run.prefill(prompt)), sampling, generator,   # its logits give token 1
                           stream.prefix is not None)
    stats.target_calls += 1
    pos, new, queue = stream.length, [tok_host], _queued_steps(run)
    while True:
        kept = stream.append(new)
        if progress is not None:
            progress.update(kept)
        if stream.done:
            break
        k = min(queue, stream.remaining)
        toks, new = _plain_steps(run, last, pos, k, 1, sampling, generator, stream.process)
        last, pos = toks[-1:], pos + k
        stats.target_calls += k


def decode_speculative(target, draft, stream: TokenStream, sampling: SamplingConfig, spec: SpeculativeConfig,
                       generator, stats: DecodeStats, progress=None, mode: str = "eager") -> None:
    policy = policy_for(spec, target, draft, "speculative", mode, sm.greedy_limit(sampling).greedy)
    _decode_chain(target, draft, stream, sampling, generator, stats, progress, mode, policy,
                  longest=spec.max_draft_length if spec.adaptive else spec.draft_length,
                  threshold=spec.confidence_threshold if spec.adaptive else 0.0, verifier=spec.verifier)


def decode_prompt_lookup(target, draft, stream: TokenStream, sampling: SamplingConfig, cfg, generator,
                         stats: DecodeStats, progress=None, mode: str = "eager") -> None:
    """``method="prompt_lookup"`` on the static engine: the drafts come from
    :class:`~fastdecode.decoding.prompt_lookup.NgramIndex` on the host (the text is there anyway), q is
    one-hot at each draft, and the target forward and verification are those of :func:`decode_speculative`
    (one host sync per step). No match: the draft model drafts the step if one is given (its confidence stop
    as in the dynamic engine, off on CUDA as for ``speculative``), else a plain one-token step."""
    from .prompt_lookup import NgramIndex, length_policy

    policy = length_policy(cfg, target, draft, mode, sm.greedy_limit(sampling).greedy)
    index = NgramIndex(cfg.max_matching_ngram_size, cfg.min_matching_ngram_size)
    threshold = DEFAULT_CONFIDENCE_THRESHOLD if cfg.adaptive and kv.device(target).type != "cuda" else 0.0
    stats.extra.update(ngram_draft_steps=0, model_draft_steps=0)
    _decode_chain(target, draft, stream, sampling, generator, stats, progress, mode, policy,
                  longest=cfg.prompt_lookup_num_tokens, threshold=threshold, verifier=cfg.verifier, index=index)


def _decode_chain(target, draft, stream: TokenStream, sampling: SamplingConfig, generator, stats: DecodeStats,
                  progress, mode: str, policy, *, longest: int, threshold: float, verifier: str, index=None) -> None:
    """The static engine's chain loop. Each step drafts at most ``longest`` tokens (``policy`` says how many, 0: a
    plain step): copied from the text by the n-gram ``index`` when it has a match (q one-hot), else by the
    ``draft`` model (None: a plain step instead), which stops early below ``threshold`` confidence."""
    sampling = sm.greedy_limit(sampling)
    device = kv.device(target)
    chunk = bucket(longest + 1)                              # the longest forward of the loop
    cap = capacity_for(stream.length, stream.max_new_tokens, chunk)
    trun = runner(target, cap, mode, longest=chunk)
    drun = runner(draft, cap, mode, longest=chunk) if draft is not None else None
    seq = torch.zeros(cap, dtype=torch.long, device=device)  # the committed tokens, on the device
    seq[: stream.length] = torch.tensor(stream.tokens, device=device)
    trun.prefill(seq[None, : stream.length - 1])
    if drun is not None:
        drun.prefill(seq[None, : stream.length - 1])
    pad = torch.zeros(cap, dtype=torch.long, device=device)
    dlen = stream.length - 1   # draft slots holding committed tokens (the target always holds L - 1)
    # model drafts: two recorded graphs (with logits processors only those the graphs apply: DenseRules)
    recorded = recordable(drun, trun, sampling, verifier, threshold, stream.prefix)
    while not stream.done:
        L = stream.length
        last = seq[L - 1 : L]  # the newest committed token: in neither cache yet
        g = policy.next_length(stream.remaining)
        proposal = index.propose(stream.tokens, g) if index is not None and g > 0 else []
        if g <= 0 or (not proposal and drun is None):  # plain target steps: as many as the policy has planned,
            # queued on the device (CUDA) up to _queued_steps, one host read for all
            k = policy.plain_run(min(_queued_steps(trun), stream.remaining)) if g <= 0 else 1
            toks, host = _plain_steps(trun, last, L - 1, k, chunk, sampling, generator, stream.process)
            stats.target_calls += k
            seq[L : L + k] = toks
            kept = stream.append(host)
            if progress is not None:
                progress.update(kept)
            for _ in range(k):
                stats.record_step(0, 0)
            continue
        if proposal:   # 1a. n-gram drafts: point masses
            g = len(proposal)
            x = torch.tensor(proposal, dtype=torch.long, device=device)
            stats.extra["ngram_draft_steps"] += 1
        else:          # 1b. the draft model proposes g tokens (no host sync unless the confidence stop is on)
            x, q, dlen = _draft(drun, seq, pad, last, L, dlen, g, sampling, generator, stats, threshold, chunk,
                                recorded, stream.process, stream.prefix)
            g = x.shape[0]
            if index is not None:
                stats.extra["model_draft_steps"] += 1

        # 2. one target forward over [last, x_1..x_g], padded to its bucket when recorded (processed in the
        # recorded verification when that runs, else here)
        in_graph = recorded and not proposal and stream.prefix is not None
        logits = score_drafts(trun, last, x, pad, L, chunk, stats)
        logits = logits if in_graph else stream.process(logits, x)

        # 3. verification on the device (recorded whole, with its draws made first, for model drafts)
        if proposal:   # (greedy: q unused)
            q = None if sampling.greedy else sm.one_hot(x, logits.shape[-1])
            verdict = packed(decide(logits, q, x, sampling, verifier, generator, check_q=False))
        else:
            verdict = verify_drafts(trun, logits, q, x, sampling, verifier, generator, recorded, stream.prefix)

        # 4. the one host sync of the step: (n accepted, next token, all finite) and the drafts
        n_acc, nxt_host, drafts = read_verdict(verdict, x, stream.prefix is not None)
        seq[L : L + n_acc] = x[:n_acc]
        seq[L + n_acc : L + n_acc + 1] = verdict[1:2]
        kept = stream.append(drafts[:n_acc] + [nxt_host])
        stats.record_step(g, n_acc)
        policy.update(g, n_acc)
        if progress is not None:
            progress.update(kept)
        if not proposal:
            dlen = L + min(n_acc, g - 1)  # the draft fed last and x_1..x_{g-1}; x_g only if rejected after it
    policy.report(stats)


def score_drafts(trun, last, x, pad, L: int, chunk: int, stats: DecodeStats) -> torch.Tensor:
    """The target's logits [g + 1, V] over [last, x_1..x_g] at slots L - 1 .., one forward padded as
    :func:`padded` says (``chunk``: the longest the cache has room for)."""
    g = x.shape[0]
    b = padded(trun, g + 1, chunk)
    stats.target_calls += 1
    return trun.forward(torch.cat([last, x, pad[: b - g - 1]])[None], L - 1)[: g + 1]


def verify_drafts(trun, logits, q, x, sampling: SamplingConfig, verifier: str, generator, recorded: bool,
                  prefix=None):
    """The packed verdict of a draft model's chain (:func:`~.static_step.decide`): recorded whole, its draws
    made first, when ``recorded`` (``logits`` then raw: the graph applies ``prefix``'s dense rules; else
    ``logits`` are processed already)."""
    if recorded:
        return verify_recorded(trun, logits, q, x, sampling, generator, prefix)
    return packed(decide(logits, q, x, sampling, verifier, generator))


def read_verdict(verdict: torch.Tensor, x: torch.Tensor, processed: bool = False) -> tuple[int, int, list[int]]:
    """The step's one host read: (n accepted, next token, the drafts on the host); NaN or +inf logits (the
    verdict's flag; ``processed``: or a row the processors masked whole) are a ValueError."""
    n, nxt, ok, *drafts = torch.cat([verdict, x]).tolist()
    if not ok:
        _raise_non_finite(processed)
    return n, nxt, drafts


def _draft(drun, seq, pad, last, L: int, dlen: int, g: int, sampling: SamplingConfig, generator,
           stats: DecodeStats, threshold: float, chunk: int, recorded: bool = False, process=None, prefix=None):
    """The draft model's g tokens after the committed text seq[:L] (the draft holds its first ``dlen``): the
    committed tokens it lacks first (inside its first forward when plain, else fed in pieces of at most
    ``chunk``), then one token per forward, sampled on the device; stops early when the draft's confidence
    falls below ``threshold`` (a host read per token). ``recorded``: the g tokens from one recorded graph
    (:func:`~.static_step.draft_chain`, with ``prefix``'s dense rules in it). ``process``: the stream's logits
    processors (unrecorded drafting). Returns (drafts [g'], q rows [g', V] (when greedy: the logits the drafts were chosen by [g'], which
    the verification checks for NaN / +inf), the draft's committed length)."""
    first = L - 1  # the draft's first forward: slots first .. L - 1
    if dlen < L - 1:  # committed tokens the draft has not seen (after a full acceptance, plain or n-gram steps)
        if drun.mode == "eager" and L - dlen <= (drun.max_forward or L):
            first = dlen  # plain forwards: the catch-up rides along with the first draft token's forward
        else:             # recorded forwards keep one-token drafting shapes: catch up on its own
            stats.draft_calls += feed(drun, seq, pad, dlen, L - 1 - dlen, most=chunk)
        dlen = L - 1
    if recorded:
        x, q = draft_chain(drun, last, L - 1, g, sampling, generator, prefix)
        stats.draft_calls += g
        return x, q, dlen
    cur, xs, qs, chosen = last, [], [], []
    for i in range(g):
        if i == 0 and first < L - 1:
            dl = drun.forward(seq[None, first:L], first, keep=1)
        else:
            dl = drun.forward(cur.view(1, 1), L - 1 + i)
        scores = dl if process is None else process(dl, torch.cat(xs) if xs else None)
        if sampling.greedy:
            x = scores.argmax(-1)
            # argmax picks a NaN or +inf logit if there is one, so the chosen logit tells (checked at the step's
            # sync; the logits themselves may be a recorded graph's output, rewritten by the next replay)
            chosen.append(scores.gather(-1, x[:, None])[:, 0])
        else:
            q = sm.probs(scores, sampling, check_finite=False)
            x = sample(q, generator)
            qs.append(q)
        xs.append(x)
        cur = x
        if threshold > 0 and i + 1 < g and float(sm.confidence(dl)[0]) < threshold:
            break  # a host sync per draft token: see the module docstring for the CUDA default
    stats.draft_calls += len(xs)
    return torch.cat(xs), torch.cat(chosen or qs), dlen
