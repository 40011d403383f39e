"""Batched decoding (batch size B > 1) with ragged acceptance: ``autoregressive``, ``speculative`` (token
and block verifiers, fixed and adaptive draft length) and ``prompt_lookup``, on the dynamic engine and on the
static engine's slot caches (eager or recorded forwards: :class:`~fastdecode.decoding.batched_cache._SlotCache`); ``multi_draft`` is in
:mod:`fastdecode.decoding.batched_tree`, on the same columns and masks (both engines too). The caches (shared
columns, validity masks, slot caches, the output assembly) are in :mod:`fastdecode.decoding.batched_cache`.

Design: shared columns, per-row validity masks, no data moves.

- Every row of a KV cache shares its column axis. A forward appends the same number of columns to every
  row; each cache has a 2D validity mask [B, columns] (1 = a real token of that row, 0 = left padding, a
  rejected draft, or a catch-up slot the row did not need) that transformers turns into the causal +
  padding 4D mask itself. A row's position ids count its valid columns (as HF does with left padding:
  position = number of valid tokens before it), so a row never sees another row's raggedness.
- One step: each row's committed tokens not yet in a cache ("pending") are fed as a left-padded block
  (the prompt in the first step, then the row's last token, plus for the draft the last draft token
  of a fully accepted draft); the draft proposes ``g`` tokens for every row (``g`` = the longest draft
  any active row wants this step), the target scores pending + g drafts for every row in ONE forward,
  and each row is verified on its own chain of ``len_r <= g`` drafts. A row that accepted n_r drafts
  marks its columns after the n_r-th draft invalid, forever; nothing is recomputed or moved. Trailing
  columns no row needs are cropped, so the caches grow by the longest accepted run, not by g + 1.
- Draft length: per row, capped by the shared g. Fixed length: every row drafts ``draft_length`` (less only
  near its budget), as alone. Adaptive: each row keeps its own gamma (+2 / -1) and confidence stop, the
  single-row rules, and the batch stops drafting once fewer than half of its rows still want a draft
  (those rows' chains are cut there): one long-drafting row does not make every row pay for g forwards
  and g + 1 verified columns. With B = 1 this is exactly the single-row rule. Rows that stopped early ride
  along to the shared g; their extra drafts are ignored (not verified, not counted).
- Prompt lookup: each row has its own :class:`~fastdecode.decoding.prompt_lookup.NgramIndex` over its own
  tokens (prompt without padding + its generated text) and its own +2 / -1 length policy; a row without a
  match drafts nothing that step. The proposals are point masses (q one-hot at each draft) verified by the
  same ragged token / block rules. With a draft model (``draft=``), the rows without a match draft with it in
  the same step (their own length and confidence stop, no batch stop), the copying rows riding along in the
  draft forwards fed their own n-gram drafts, so the draft cache holds what each row drafted. Per row the
  drafts made and accepted are exactly those of the row alone; a shorter draft rides along to the longest
  one (padding columns, never verified, invalidated).
- Finished rows (EOS or budget) are dropped from the batch (their cache rows are selected away once,
  when they finish), so they stop consuming compute; their output is padded with ``pad_token_id``.
- Recorded forwards (static engine, ``compile=True`` / ``"cudagraphs"``): every forward after the prompts' is
  padded to [bucket(B), bucket(n)] (powers of two; padding tokens see only themselves), the mask is built
  inside the recorded function from a [bucket(B), capacity] validity input (trees: a [bucket(B), bucket(n),
  capacity] visibility), and one graph serves each shape, kept on the model for later calls. A finished row
  stays in its cache row as inert padding until the active rows fit half the bucket; then they are copied
  (once per layer) into the cache of that smaller bucket's runner. See ``batched_cache._SlotCache``.

Randomness: one generator serves the whole batch, so a row's sampled tokens depend on what else is in
the batch (and on the shared g). Each row's output law is still exactly the target's, and rows are
independent in law; the same seed does not give a row the same tokens in another batch.
"""
from __future__ import annotations

import torch

from ..config import (DEFAULT_CONFIDENCE_THRESHOLD, MultiDraftConfig, PromptLookupConfig, SamplingConfig,
                      SpeculativeConfig)
from ..stats import DecodeStats
from ..verification.block import verify_block_batched
from ..verification.primitives import residual, sample, uniform
from . import hf_cache as kv
from . import sampling as sm
from .batched_cache import _block, _bucket, _Cache, _SlotCache, batch_output, static_capacity
from .batched_tree import decode as decode_tree
from .policy import DraftLengthPolicy, measured_switch, report_fallback
from .processors import process_rows
from .stream import TokenStream

BATCHED_METHODS = ("autoregressive", "speculative", "prompt_lookup", "multi_draft")   # with a batched loop


def one_by_one(method: str, lambda_attention) -> bool:
    """Whether a batch runs row by row (:mod:`~fastdecode.decoding.batched_rows`): no batched loop for it."""
    return method not in BATCHED_METHODS or lambda_attention is not None


def _pad_from_model(target):
    for src in (getattr(target, "generation_config", None), target.config):
        pad = getattr(src, "pad_token_id", None) if src is not None else None
        if pad is not None:
            pad = torch.as_tensor(pad).flatten()
            if pad.numel():
                return int(pad[0])
    return None


def inferred_mask(target, input_ids: torch.Tensor, pad_token_id, eos_ids) -> torch.Tensor | None:
    """HF's mask for a call that gives none: when the pad id (the argument, else the model's) is known, is not an
    EOS id and begins some row, each row's leading pad tokens are padding [B, L] long; else None (all real).
    HF also masks a pad token inside a row's text; here only the leading ones are padding (a left-padded
    batch's), so a prompt that uses the pad token in its text keeps it."""
    pad = pad_token_id if pad_token_id is not None else _pad_from_model(target)
    if not isinstance(pad, int) or isinstance(pad, bool) or pad in eos_ids or not bool((input_ids[:, 0] == pad).any()):
        return None
    mask = ((input_ids != pad).long().cumsum(-1) > 0).long()
    return torch.where(mask.any(-1, keepdim=True), mask, torch.ones_like(mask))   # (a row of pads only: as given)


def check_batch(target, input_ids: torch.Tensor, attention_mask, pad_token_id) -> tuple[torch.Tensor, int | None]:
    """Validate a (possibly batched, left-padded) call. Returns (attention_mask [B, L] long, pad id or None).

    Raises ValueError for B = 0, a mask whose shape differs from the ids, a mask that is not 0/1, right
    padding (a 0 after a 1), an all-padding row, and, for B > 1, a missing pad_token_id (neither the argument
    nor the target's generation_config / config has one). (B > 1 with a method that has no batched loop, or
    Lambda attention: the rows one by one, :mod:`~fastdecode.decoding.batched_rows`; compile= is checked by
    ``api._static_mode``: recorded forwards serve batches too.)
    """
    B, L = input_ids.shape
    if B == 0:
        raise ValueError("input_ids has batch size 0: pass at least one prompt")
    if attention_mask is None:
        mask = torch.ones_like(input_ids, dtype=torch.long)
    else:
        if not isinstance(attention_mask, torch.Tensor):
            raise ValueError(f"attention_mask must be a tensor [batch, prompt_len] or None, "
                             f"got {type(attention_mask).__name__}")
        if tuple(attention_mask.shape) != (B, L):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, but input_ids has shape "
                             f"{(B, L)}: they must match")
        mask = attention_mask.to(input_ids.device).long()
        if ((mask != 0) & (mask != 1)).any():
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (real tokens)")
        empty = (mask.sum(-1) == 0).nonzero()
        if empty.numel():
            raise ValueError(f"row {int(empty[0])} of attention_mask is all padding: every row needs a real token")
        right = (mask[:, 1:] < mask[:, :-1]).any(-1).nonzero()
        if right.numel():
            r = int(right[0])
            what = "right padding" if mask[r, -1] == 0 else "a masked token inside the text, which is not padding"
            raise ValueError(f"row {r} of attention_mask has a 0 after a 1 ({what}): fastdecode "
                             "takes left padding only, as HF generate does (tokenizer.padding_side = 'left')")
    if pad_token_id is not None and (not isinstance(pad_token_id, int) or isinstance(pad_token_id, bool)
                                     or pad_token_id < 0):
        raise ValueError(f"pad_token_id must be an int >= 0 or None, got {pad_token_id!r}")
    if B == 1:
        return mask, pad_token_id
    if pad_token_id is None:
        pad_token_id = _pad_from_model(target)
    if pad_token_id is None:
        raise ValueError(f"batch size {B} needs a pad_token_id (to pad rows that finish early): pass "
                         "pad_token_id=..., or set target.generation_config.pad_token_id")
    return mask, pad_token_id


def _verify_token(p, q, drafts, lens, generator):
    """Token-by-token rule on ragged chains. p [B, g+1, V], q [B, g, V], drafts [B, g], lens [B] (row r's
    chain is its first lens[r] drafts). Returns (accepted [B], next token [B])."""
    B, g = drafts.shape
    rows = torch.arange(B, device=p.device)
    if g:
        x = drafts.long()
        px = p[:, :g].gather(2, x[..., None])[..., 0].double()
        qx = q.gather(2, x[..., None])[..., 0].double()
        u = uniform(B * g, generator, p.device).view(B, g)
        ok = (u * qx < px) & (qx > 0) & (torch.arange(g, device=p.device)[None] < lens[:, None])
        n = ok.long().cumprod(1).sum(1)
        qn = torch.cat([q, torch.zeros_like(q[:, :1])], 1)[rows, n]   # zero past the chain: residual = p (bonus)
        qn = torch.where((n == lens)[:, None], torch.zeros_like(qn), qn)
    else:
        n = torch.zeros(B, dtype=torch.long, device=p.device)
        qn = torch.zeros_like(p[:, 0])
    return n, sample(residual(p[rows, n], qn), generator)


def _verify_block(p, q, drafts, lens, generator):
    """Block verification on ragged chains: rows grouped by chain length."""
    B = drafts.shape[0]
    n = torch.zeros(B, dtype=torch.long, device=p.device)
    nxt = torch.zeros(B, dtype=torch.long, device=p.device)
    for length in sorted(set(lens.tolist())):
        idx = (lens == length).nonzero()[:, 0]
        if length == 0:
            n_i, nxt_i = torch.zeros_like(idx), sample(p[idx, 0], generator)
        else:
            n_i, nxt_i = verify_block_batched(p[idx, : length + 1], q[idx, :length], drafts[idx, :length], generator)
        n[idx], nxt[idx] = n_i, nxt_i
    return n, nxt


def _lookup_model_drafts(dc, dpend, props, lens, model_rows, drafts, lens_t, sampling, generator, stats, threshold,
                         rows=()):
    """Prompt lookup with a draft model: the rows without an n-gram match (``model_rows``) draft with the model,
    up to their own length and confidence stop, exactly as alone; the other rows ride along, fed their own
    n-gram drafts (so that the draft cache holds what they drafted). Returns (drafts [nb, G], q [nb, gm, V]
    (the model rows' q; the n-gram rows' entries are replaced by one-hot rows), lens_t, first draft column,
    drafts fed per row). ``rows``: the rows' streams, whose logits processors apply to the drafts' rows."""
    nb, device = len(props), drafts.device
    gm = max(lens[i] for i in model_rows)
    gl = max(len(x) for x in props)
    ngram = torch.tensor([x[:gm] + [0] * (gm - len(x[:gm])) for x in props], dtype=torch.long, device=device)
    is_ng = torch.tensor([bool(x) for x in props], dtype=torch.bool, device=device)
    nlen = torch.tensor([len(x) for x in props], dtype=torch.long, device=device)
    live = torch.tensor([lens[i] if i in model_rows else 0 for i in range(nb)], dtype=torch.long, device=device)
    ids, m = _block(dpend, device)
    dfirst = dc.columns + ids.shape[1]
    xs, qs = [], []
    for i in range(gm):
        logits = dc.forward(ids, m, 1)[:, 0]        # [nb, V]
        stats.draft_calls += 1
        qi = sm.probs(process_rows(rows, logits, torch.stack(xs, 1) if xs else None), sampling)
        x = qi.argmax(-1) if sampling.greedy else sample(qi, generator)
        x = torch.where(is_ng & (i < nlen), ngram[:, i], x)   # n-gram rows: their own draft
        xs.append(x)
        qs.append(qi)
        if threshold > 0 and i + 1 < gm:
            low = torch.softmax(logits, -1).amax(-1) < threshold
            live = torch.where(low & (live > i + 1), torch.full_like(live, i + 1), live)
        if i + 1 < gm and not bool((live > i + 1).any()):
            break                                   # no model row wants more (n-gram drafts past fed are pending)
        ids, m = x[:, None], torch.ones(nb, 1, dtype=torch.long, device=device)
    gx = len(xs)
    width = max(gx, gl)
    out = torch.zeros(nb, width, dtype=torch.long, device=device)
    out[:, :gx] = torch.stack(xs, 1)
    if gl > gx:
        out[:, gx:] = drafts[:, gx:]
    lens_t = torch.where(is_ng, nlen, live.clamp_max(gx))
    return out, torch.stack(qs, 1), lens_t, dfirst, gx - 1


def decode(target, draft, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
           eos_ids: set[int], pad_token_id: int, sampling: SamplingConfig,
           spec: SpeculativeConfig | PromptLookupConfig | None, generator, stats: DecodeStats, progress=None,
           static: bool = False, mode: str = "eager", processors=None, stop=None) -> torch.Tensor:
    """Decode a left-padded batch; returns sequences [B, L + longest new] (pad_token_id after a row's end).

    draft / spec None: autoregressive (the same loop with no drafts). spec a PromptLookupConfig: prompt lookup,
    each row's drafts from its own n-gram index (and from the draft model, if given, where it has no match).
    static: the static engine's preallocated slot caches, else transformers' DynamicCache; mode (static only):
    "eager", or recorded forwards ("cudagraphs" / "inductor", see :class:`_SlotCache`). processors: the logits
    processors (:mod:`~fastdecode.decoding.processors`), each row's with its own text; stop: the rows' stop
    rules (:class:`~fastdecode.decoding.stream.Stops`), each row checked with its own text."""
    if isinstance(spec, MultiDraftConfig):
        return decode_tree(target, draft, input_ids, attention_mask, max_new_tokens, eos_ids, pad_token_id, sampling,
                           spec, generator, stats, progress, static=static, mode=mode, processors=processors,
                           stop=stop)
    device = kv.device(target)
    B, L = input_ids.shape
    streams = [TokenStream(input_ids[r : r + 1, L - int(attention_mask[r].sum()):], max_new_tokens, eos_ids,
                           processors=processors, stop=stop, row=r) for r in range(B)]
    active = [r for r in range(B) if not streams[r].done]   # original row of each batch position
    lookup = isinstance(spec, PromptLookupConfig)
    with_draft = spec is not None and draft is not None
    # prompt lookup's model drafts stop early below this confidence, as alone (prompt_lookup.decode)
    lookup_threshold = DEFAULT_CONFIDENCE_THRESHOLD if lookup and spec.adaptive else 0.0
    longest = 0 if spec is None else (spec.max_draft_length if spec.adaptive else spec.draft_length)
    # a step's columns at most: the draft's pending block (accepted drafts it has not seen and the bonus) and its
    # fed drafts; the target's pending token and the drafts
    step = 2 * longest + 2
    if static:
        # (prompt lookup with a draft model: the draft sees the rows' tokens only when some row has no n-gram
        # match, so one row's fed text and another's pending tokens may together reach twice the budget)
        cap = static_capacity(L, 2 * max_new_tokens if lookup and with_draft else max_new_tokens, step)
        if mode != "eager":
            cap += _bucket(longest + 2)                          # a recorded forward's padding columns
        tc = _SlotCache(target, len(active), device, cap, mode, "target")
        dc = _SlotCache(draft, len(active), device, cap, mode, "draft") if with_draft else None
    else:
        tc = _Cache(target, len(active), device)
        dc = _Cache(draft, len(active), device) if with_draft else None
    tpend = [streams[r].tokens[:] for r in active]           # committed tokens the target has not seen
    dpend = [streams[r].tokens[:] for r in active]           # ... the draft has not seen
    if lookup:   # per row: its own n-gram index over its own tokens (no padding) and its own +2 / -1 length
        from .prompt_lookup import NgramIndex, length_policy
        indexes = [NgramIndex(spec.max_matching_ngram_size, spec.min_matching_ngram_size) for _ in active]
        policies = [length_policy(spec) for _ in active]
        stats.extra.update(ngram_draft_steps=0, model_draft_steps=0)
    else:
        indexes = [None for _ in active]
        policies = [DraftLengthPolicy(spec, cost=None) if spec is not None else None for _ in active]  # per row
    verify = None if spec is None else (_verify_block if spec.verifier == "block" else _verify_token)
    per_row = [dict(new_tokens=0, drafted=0, accepted=0, steps=0) for _ in range(B)]
    batch_steps = 0
    # plain or drafting steps are chosen for the whole batch (its forwards are shared) by measured rates, timed
    # per number of live rows (a step's tokens and cost both shrink as rows finish)
    measured = spec is not None and spec.adaptive and spec.fallback == "measured"
    switches = {}
    plain_steps = 0

    while active:
        for c in (tc, dc):
            if c is not None:
                c.make_room(step)
        nb = len(active)
        switch = None
        if measured:
            if nb not in switches:
                fresh = measured_switch(target, id(draft), "batch", type(spec).__name__,
                                        mode if static else "dynamic", nb, sampling.greedy)
                if switches:   # rows finished: start from the last count's timings and plan if it has none
                    fresh.inherit(switches[min(switches)])
                switches[nb] = fresh
            switch = switches[nb]
        drafting = switch is None or switch.draft_next()
        plain_steps += not drafting
        lens = [pol.next_length(streams[r].remaining) if pol is not None and drafting else 0
                for pol, r in zip(policies, active)]
        g = max(lens)
        drafts = torch.zeros(nb, 0, dtype=torch.long, device=device)
        q = None
        fed = None    # drafts of this step fed into the draft cache (None: the draft model did not run)
        if lookup:
            # each row copies from its own text; a row without a match drafts nothing this step (or, with a
            # draft model, drafts with the model). Shorter drafts are padded to the longest: those columns ride
            # along, unverified (lens_t) and invalidated.
            props = [idx.propose(streams[r].tokens, n) if n > 0 else [] for idx, r, n in zip(indexes, active, lens)]
            lens_t = torch.tensor([len(x) for x in props], dtype=torch.long, device=device)
            stats.extra["ngram_draft_steps"] += sum(1 for x in props if x)
            gl = max(len(x) for x in props)
            if gl:
                drafts = torch.tensor([x + [x[-1] if x else 0] * (gl - len(x)) for x in props], dtype=torch.long,
                                      device=device)
            model_rows = [i for i in range(nb) if not props[i] and lens[i] > 0] if dc is not None else []
            if model_rows:
                drafts, q, lens_t, dfirst, fed = _lookup_model_drafts(
                    dc, dpend, props, lens, model_rows, drafts, lens_t, sampling, generator, stats, lookup_threshold,
                    [streams[r] for r in active])
                stats.extra["model_draft_steps"] += len(model_rows)
        elif g > 0:
            ids, m = _block(dpend, device)
            dfirst = dc.columns + ids.shape[1]             # column of the first fed draft
            xs, qs = [], []
            live = torch.tensor(lens, device=device)       # drafts each row still wants
            for i in range(g):
                logits = dc.forward(ids, m, 1)[:, 0]        # [nb, V]
                stats.draft_calls += 1
                qi = sm.probs(process_rows([streams[r] for r in active], logits, torch.stack(xs, 1) if xs else None),
                              sampling)
                x = qi.argmax(-1) if sampling.greedy else sample(qi, generator)
                xs.append(x)
                qs.append(qi)
                if spec.adaptive and spec.confidence_threshold > 0 and i + 1 < g:
                    low = torch.softmax(logits, -1).amax(-1) < spec.confidence_threshold
                    live = torch.where(low & (live > i + 1), torch.full_like(live, i + 1), live)
                if spec.adaptive and i + 1 < g and 2 * int((live > i + 1).sum()) < nb:
                    live = live.clamp_max(i + 1)   # fewer than half the rows still draft: the batch stops
                    break
                ids, m = x[:, None], torch.ones(nb, 1, dtype=torch.long, device=device)
            drafts, q = torch.stack(xs, 1), torch.stack(qs, 1)   # [nb, g'], [nb, g', V]
            lens_t = live.clamp_max(drafts.shape[1])
            fed = drafts.shape[1] - 1   # the pending block and drafts 1..g'-1 (the last is never fed)
        else:
            lens_t = torch.zeros(nb, dtype=torch.long, device=device)
        gd = drafts.shape[1]

        ids, m = _block(tpend, device)
        tfirst = tc.columns + ids.shape[1]                  # column of the first draft
        ids = torch.cat([ids, drafts], 1)
        m = torch.cat([m, torch.ones_like(drafts)], 1)
        logits = process_rows([streams[r] for r in active], tc.forward(ids, m, gd + 1), drafts)   # [nb, gd + 1, V]
        stats.target_calls += 1
        p = sm.probs(logits.reshape(nb * (gd + 1), -1), sampling).view(nb, gd + 1, -1)
        if lookup and gd:   # point-mass drafts: the verifiers' q is one-hot at each n-gram draft
            onehot = torch.zeros(nb, gd, p.shape[-1], dtype=p.dtype, device=device).scatter_(2, drafts[..., None], 1.0)
            if q is None:
                q = onehot
            else:           # rows drafted by the model keep its q rows (q: [nb, gm, V], gm <= gd)
                model = torch.tensor([not x for x in props], dtype=torch.bool, device=device)[:, None, None]
                onehot[:, : q.shape[1]] = torch.where(model, q, onehot[:, : q.shape[1]])
                q = onehot
        if gd:
            n, nxt = verify(p, q, drafts, lens_t, generator)
        else:
            n = torch.zeros(nb, dtype=torch.long, device=device)
            nxt = p[:, 0].argmax(-1) if sampling.greedy else sample(p[:, 0], generator)
        batch_steps += 1

        # caches keep each row's accepted drafts; the rest of this step's draft columns become invalid
        tc.invalidate(tfirst, n)
        if fed is not None:
            dc.invalidate(dfirst, n.clamp_max(fed))
        n_l, nxt_l, lens_l, d_l = n.tolist(), nxt.tolist(), lens_t.tolist(), drafts.tolist()
        keep = []
        emitted = 0
        for i, r in enumerate(active):
            acc = d_l[i][: n_l[i]]
            stats.record_step(lens_l[i], n_l[i])
            kept = streams[r].append(acc + [nxt_l[i]])
            emitted += kept
            row = per_row[r]
            row["drafted"] += lens_l[i]
            row["accepted"] += n_l[i]
            row["steps"] += 1
            if progress is not None:
                progress.update(kept)
            if policies[i] is not None:
                policies[i].update(lens_l[i], n_l[i])
            tpend[i] = [nxt_l[i]]
            if dc is not None and fed is not None:
                # the draft saw the pending block and the first `fed` drafts; accepted drafts past them are pending
                dpend[i] = d_l[i][min(n_l[i], fed) : n_l[i]] + [nxt_l[i]]
            elif dc is not None:
                dpend[i] = dpend[i] + acc + [nxt_l[i]]
            if not streams[r].done:
                keep.append(i)
        if switch is not None:
            switch.emitted(emitted)
        if len(keep) < nb:
            idx = torch.tensor(keep, dtype=torch.long, device=device)
            for c in (tc, dc):
                if c is not None:
                    c.select(idx)
            active = [active[i] for i in keep]
            tpend = [tpend[i] for i in keep]
            dpend = [dpend[i] for i in keep]
            policies = [policies[i] for i in keep]
            indexes = [indexes[i] for i in keep]
        for c in (tc, dc):
            if c is not None and active:
                c.trim()

    if spec is not None and spec.adaptive:                 # (the rates of the whole batch)
        report_fallback(stats, plain_steps, switches.get(B), "measured" if measured else "off")
    return batch_output(streams, per_row, batch_steps, stats, input_ids, pad_token_id)
