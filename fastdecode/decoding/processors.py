"""Logits processors that depend on the text before a position: HF's ``repetition_penalty``, its minimum
lengths (``min_new_tokens``, ``min_length``), ``no_repeat_ngram_size``, ``bad_words_ids``, ``suppress_tokens``,
``begin_suppress_tokens``, ``sequence_bias``, forced BOS / EOS, the exponential decay length penalty, and the
caller's own (``logits_processor``, ``prefix_allowed_tokens_fn``), applied as HF ``generate`` applies them, to
the target's logits and to the draft's alike.

Why they keep speculative decoding lossless: each one maps a position's raw logits and the tokens before it
to new logits, so the processed target is just another next-token distribution p'(x | prefix). Every row of
logits a loop forms has a known prefix (the committed text, then the drafts before that row), so each row is
processed with its own prefix and the verifiers keep p' exactly (the draft's q' only has to be what its
tokens were drawn from: processing it too keeps q' closer to p', so more drafts are accepted than with the raw
q; ``bench/processors.py`` measures it).

- repetition penalty r: a token that occurs in the prefix (prompt included) gets logit l * r if l < 0, else
  l / r (HF's ``RepetitionPenaltyLogitsProcessor``; the same float32 arithmetic, so greedy tokens equal HF's).
- minimum length: while fewer than ``min_new_tokens`` tokens precede a position in the generated text, every
  EOS id gets logit -inf there (HF's ``MinNewTokensLengthLogitsProcessor``; ``min_length`` counts the prompt
  and is turned into the same count).
- no repeated n-gram (n = ``no_repeat_ngram_size``): a token that would complete an n-gram the prefix already
  holds gets -inf (``NoRepeatNGramLogitsProcessor``; no ban while the prefix is shorter than n - 1).
- bad words: for each sequence (a_1 .. a_k, b), b gets -inf where the prefix ends with a_1 .. a_k (k = 0:
  always; ``NoBadWordsLogitsProcessor``, which drops one-token sequences that are an EOS id);
  ``suppress_tokens`` are one-token bad words; ``begin_suppress_tokens`` get -inf at the first generated
  position only.
- ``sequence_bias``: a sequence's bias is added to its last token where the prefix ends with the rest (applied
  first, as HF does); forced BOS / EOS (every other token -inf at the first position of a one-token prompt /
  at the last position the budget allows); the exponential decay length penalty on the EOS logits.
- the caller's: ``prefix_allowed_tokens_fn(batch_id, input_ids)`` (every token it does not list: -inf), then
  each ``logits_processor`` callable, after HF's own as in HF; both get a row's own text (no padding) and must
  be functions of it (a row may belong to a draft that is then rejected).

The committed text's tokens are kept on the device (a presence mask and the list of distinct ids, and the
tokens in order where a rule reads them), updated when the stream commits tokens; the penalty touches only the
columns of tokens in a row's prefix.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .dense_rules import DenseRules


@dataclass(frozen=True)
class Processors:
    """What to apply. ``eos_ids``: the ids a minimum length holds back."""

    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    eos_ids: tuple[int, ...] = ()
    no_repeat_ngram_size: int = 0
    bad_words: tuple[tuple[int, ...], ...] = ()   # suppress_tokens included, as one-token words
    begin_suppress: tuple[int, ...] = ()
    sequence_bias: tuple[tuple[tuple[int, ...], float], ...] = ()
    forced_bos: int | None = None          # forced at the first generated position (a one-token prompt only)
    forced_eos: tuple[int, ...] = ()       # forced at the position with ``forced_eos_at`` new tokens before it
    forced_eos_at: int = -1
    decay: tuple[int, float] | None = None  # HF's exponential_decay_length_penalty (start, factor), on eos_ids
    custom: tuple = ()                      # the caller's logits_processor: callables (input_ids, scores) -> scores
    # the caller's processors that take a built rule's place in its slot, as in HF: (setting, processor), for
    # "sequence_bias" and "repetition_penalty" (the rules whose place in the order changes the values)
    in_slot: tuple = ()
    allowed_fn: object = None               # HF's prefix_allowed_tokens_fn(batch_id, input_ids 1-D) -> allowed ids
    group: int = 1                          # rows per prompt (num_return_sequences): batch_id = row // group

    @property
    def active(self) -> bool:
        return (self.repetition_penalty != 1.0 or (self.min_new_tokens > 0 and bool(self.eos_ids))
                or self.no_repeat_ngram_size > 0 or bool(self.bad_words) or bool(self.begin_suppress)
                or bool(self.sequence_bias) or self.forced_bos is not None or bool(self.forced_eos)
                or (self.decay is not None and bool(self.eos_ids)) or bool(self.custom) or self.allowed_fn is not None
                or bool(self.in_slot))

    @property
    def dense(self) -> bool:
        """Whether every active rule is one a recorded graph applies (:class:`DenseRules`): the repetition penalty,
        one-token bans (bad words of one token, suppressed tokens) and the minimum length; they need only which
        tokens a row's text holds and how many are new."""
        return self.active and not (self.no_repeat_ngram_size > 0 or any(len(w) > 1 for w in self.bad_words)
                                    or self.begin_suppress or self.sequence_bias or self.forced_bos is not None
                                    or self.forced_eos or self.decay is not None or self.custom or self.in_slot
                                    or self.allowed_fn is not None)

    @property
    def reads_text(self) -> bool:
        """Whether a row's tokens, in order, are needed (not only which tokens occur)."""
        return (self.no_repeat_ngram_size > 0 or any(len(w) > 1 for w in self.bad_words)
                or any(len(w) > 1 for w, _ in self.sequence_bias) or bool(self.custom) or self.allowed_fn is not None
                or bool(self.in_slot))


class Prefix:
    """The processors' view of one generation (batch 1): which tokens the committed text holds, and how many
    of them are new. :meth:`commit` follows the stream; :meth:`apply` processes rows of logits."""

    def __init__(self, procs: Processors, tokens: list[int], prompt_len: int, device, row: int = 0):
        self.procs = procs
        self.row = row   # the stream's row in the batch (prefix_allowed_tokens_fn's batch_id: row // group)
        self.device = device
        self.seen = torch.zeros(0, dtype=torch.bool, device=device)      # token id -> in the committed text
        self.ids = torch.zeros(0, dtype=torch.long, device=device)       # those ids, each once
        self._host: set[int] = set()
        self.text = torch.zeros(64, dtype=torch.long, device=device)     # the committed tokens (reads_text)
        self.length = 0
        self.new = 0
        self._new_dev = None   # the new-token count on the device, once a recorded graph asks (dense_inputs)
        self.rules = DenseRules(procs, device) if procs.dense else None   # (what a recorded graph can apply)
        self.commit(tokens)
        self.new = len(tokens) - prompt_len

    def commit(self, tokens: list[int]) -> None:
        """Tokens appended to the committed text (host ints)."""
        self.new += len(tokens)
        if self._new_dev is not None:
            self._new_dev.add_(len(tokens))
        if self.procs.reads_text and tokens:
            end = self.length + len(tokens)
            if end > self.text.shape[0]:
                self.text = torch.cat([self.text, self.text.new_zeros(max(end, 2 * self.text.shape[0]))])
            self.text[self.length : end] = torch.tensor(tokens, dtype=torch.long, device=self.device)
            self.length = end
        fresh = sorted(set(tokens) - self._host)
        if not fresh:
            return
        self._host.update(fresh)
        ids = torch.tensor(fresh, dtype=torch.long, device=self.device)
        self.seen = _grown(self.seen, fresh[-1] + 1)
        self.seen[ids] = True
        self.ids = torch.cat([self.ids, ids])

    def dense_inputs(self, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The committed text as a recorded graph reads it (:class:`DenseRules`): which token ids it holds
        [width] bool, and its new-token count [1] long, both on the device (no host read, no copy from the
        host after the first call)."""
        if self._new_dev is None:
            self._new_dev = torch.tensor([self.new], dtype=torch.long, device=self.device)
        return _grown(self.seen, width)[:width], self._new_dev

    def apply(self, logits: torch.Tensor, ahead: torch.Tensor | list[int] | None = None) -> torch.Tensor:
        """Processed float32 logits [n, V] for ``logits`` [n, V] whose last row's prefix is the committed text
        followed by ``ahead`` (tokens not yet committed: drafts, or queued steps' tokens), row j's the same
        minus the last n - 1 - j tokens of ``ahead`` (so row 0 of a verify block over g drafts, with ahead =
        the g drafts, is the committed text alone). ``logits`` is left as it was."""
        n = logits.shape[0]
        if ahead is None:
            ahead = torch.zeros(0, dtype=torch.long, device=logits.device)
        elif not isinstance(ahead, torch.Tensor):
            ahead = torch.tensor(ahead, dtype=torch.long, device=logits.device)
        m = ahead.shape[0]
        if m < n - 1:
            raise ValueError(f"{n} rows of logits need at least {n - 1} tokens ahead, got {m}")
        lengths = list(range(m - n + 1, m + 1))                                 # row j's tokens ahead
        valid = torch.arange(m, device=logits.device)[None, :] < torch.tensor(lengths, device=logits.device)[:, None]
        return self._apply(logits, ahead.view(1, m).expand(n, m), valid, lengths)

    def apply_paths(self, logits: torch.Tensor, paths: list[list[int]]) -> torch.Tensor:
        """As :meth:`apply`, row i's prefix being the committed text followed by ``paths[i]`` (a tree node's
        branch, for example)."""
        width = max((len(x) for x in paths), default=0)
        t = torch.tensor([x + [0] * (width - len(x)) for x in paths], dtype=torch.long, device=logits.device)
        valid = torch.tensor([[i < len(x) for i in range(width)] for x in paths], dtype=torch.bool,
                             device=logits.device)
        return self._apply(logits, t.view(len(paths), width), valid.view(len(paths), width), [len(x) for x in paths])

    def _apply(self, logits, t: torch.Tensor, valid: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """Row i's prefix: the committed text, then t[i, valid[i]] (``lengths``: their counts, host ints). Only
        the columns of tokens in some row's prefix are touched (gathered, penalised, written back): O(n *
        (distinct committed tokens + tokens ahead)), plus one copy of the rows. The rules that read a row's
        text in order get it from one :meth:`_texts` per call."""
        p = self.procs
        n, width = logits.shape
        x = logits.float()
        x = x.clone() if x is logits else x
        seqs, ends = self._texts(t, lengths) if p.reads_text else (None, None)
        slot = dict(p.in_slot)
        if p.sequence_bias:   # first, as in HF: the penalty then sees the biased logits
            x = self._bias(x, seqs, ends)
        elif "sequence_bias" in slot:
            x = self._custom(x, seqs, lengths, (slot["sequence_bias"],))
        if "repetition_penalty" in slot:
            x = self._custom(x, seqs, lengths, (slot["repetition_penalty"],))
        r = p.repetition_penalty
        if r != 1.0:
            if self.seen.shape[0] < width:
                self.seen = _grown(self.seen, width)
            # (committed ids fit the logits but for a draft whose logits are narrower than a prompt id: then the
            # columns it has; the filter reads the device, so it is taken only then)
            ids = self.ids if max(self._host, default=-1) < width else self.ids[self.ids < width]
            if ids.numel():   # the committed text: every row
                sub = x[:, ids]
                x[:, ids] = torch.where(sub < 0, sub * r, sub / r)
            if t.shape[1]:    # a row's tokens ahead that the committed text lacks
                # decided per (row, token), so that every entry of one token in a row writes the same value
                present = ((t[:, :, None] == t[:, None, :]) & valid[:, None, :]).any(-1)
                hit = present & ~self.seen[:width][t]
                sub = x.gather(1, t)
                x.scatter_(1, t, torch.where(hit, torch.where(sub < 0, sub * r, sub / r), sub))
        if p.bad_words or p.no_repeat_ngram_size:
            x = self._bans(x, seqs, ends)
        _fill(x, [i for i, k in enumerate(lengths) if self.new + k == 0], p.begin_suppress, float("-inf"))
        _fill(x, [i for i, k in enumerate(lengths) if self.new + k < p.min_new_tokens], p.eos_ids,
              float("-inf"))   # rows that may not end yet
        if p.allowed_fn is not None:
            x = self._allowed(x, seqs, lengths)
        x = self._forced(x, lengths)
        return self._custom(x, seqs, lengths) if p.custom else x

    def _allowed(self, x: torch.Tensor, seqs: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """HF's prefix_allowed_tokens_fn: every token it does not list for a row's text gets -inf (the scores plus
        a 0 / -inf mask, as HF adds it); an empty list is a ValueError, as in HF."""
        batch_id = self.row // self.procs.group
        mask = torch.full_like(x, float("-inf"))
        for i, k in enumerate(lengths):
            allowed = self.procs.allowed_fn(batch_id, seqs[i, : self.length + k])
            if len(allowed) == 0:
                raise ValueError(f"prefix_allowed_tokens_fn returned an empty list for batch ID {batch_id}: the "
                                 "constraint cannot be satisfied")
            mask[i, allowed] = 0
        return x + mask

    def _forced(self, x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
        """HF's forced BOS / EOS (every other token -inf, the forced one 0) and its exponential decay length
        penalty (EOS logits raised by |l| (factor^k - 1), k new tokens past the start), by each row's position."""
        p = self.procs
        for tokens, at in (((p.forced_bos,) if p.forced_bos is not None else (), 0), (p.forced_eos, p.forced_eos_at)):
            rows = [i for i, k in enumerate(lengths) if self.new + k == at] if tokens else []
            if rows and max(tokens) >= x.shape[1]:
                raise ValueError(f"forced token ids {list(tokens)}, but the model's logits have {x.shape[1]} entries")
            if rows:
                x[torch.tensor(rows, device=x.device)] = float("-inf")
                _fill(x, rows, tokens, 0.0)
        if p.decay is not None and p.eos_ids:
            start, factor = p.decay
            eos = torch.tensor([e for e in p.eos_ids if e < x.shape[1]], dtype=torch.long, device=x.device)
            for i, k in enumerate(lengths):
                if self.new + k > start:
                    sub = x[i, eos]
                    pen = (sub.abs() * (pow(factor, self.new + k - start) - 1)).masked_fill(~torch.isfinite(sub), 0.0)
                    x[i, eos] = sub + pen
        return x

    def _custom(self, x: torch.Tensor, seqs: torch.Tensor, lengths: list[int], procs=None) -> torch.Tensor:
        """The caller's logits processors (HF's ``logits_processor``; ``procs``, else all but those in a built
        rule's slot), after HF's own as in HF: each row's scores [1, V] with that row's own text as
        ``input_ids`` [1, length] (no padding), one call per row and processor. They must be functions of
        those two: a row may be a draft that is then rejected."""
        rows = []
        for i, k in enumerate(lengths):
            ids, row = seqs[i : i + 1, : self.length + k], x[i : i + 1]
            for proc in procs or self.procs.custom:
                row = proc(ids, row)
            rows.append(row)
        return torch.cat(rows).float()

    def _texts(self, t: torch.Tensor, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's text [rows, L + P] (the committed tokens, then its own ahead; past its end: padding) and
        its length [rows]."""
        L = self.length
        seqs = torch.cat([self.text[:L].expand(t.shape[0], L), t], 1)
        return seqs, torch.tensor([L + k for k in lengths], device=t.device)

    @staticmethod
    def _ends_with(seqs: torch.Tensor, ends: torch.Tensor, pattern) -> torch.Tensor:
        """[rows] bool: the row's text ends with ``pattern`` (a non-empty tuple of ids)."""
        k = len(pattern)
        tail = seqs.gather(1, (ends[:, None] - k + torch.arange(k, device=seqs.device)).clamp(min=0))
        return (ends >= k) & (tail == torch.tensor(pattern, device=seqs.device)).all(-1)

    def _bias(self, x: torch.Tensor, seqs: torch.Tensor | None, ends: torch.Tensor | None) -> torch.Tensor:
        """HF's sequence_bias: a sequence's bias added to its last token's logit where the text ends with the rest
        (one-token sequences: always), the biases summed first as HF sums them (``seqs``, ``ends``: the rows'
        texts, given when a sequence is longer than one token)."""
        width = x.shape[1]
        bad = [w[-1] for w, _ in self.procs.sequence_bias if w[-1] >= width]
        if bad:
            raise ValueError(f"sequence_bias biases token ids {bad}, but the model's logits have {width} entries")
        bias = torch.zeros_like(x)
        for w, b in self.procs.sequence_bias:
            if len(w) == 1:
                bias[:, w[0]] += b
        for w, b in self.procs.sequence_bias:
            if len(w) > 1:
                bias[:, w[-1]] += torch.where(self._ends_with(seqs, ends, w[:-1]), b, 0.0)
        return x + bias

    def _bans(self, x: torch.Tensor, seqs: torch.Tensor | None, ends: torch.Tensor | None) -> torch.Tensor:
        """-inf where a repeated n-gram or a bad word would end (``seqs``, ``ends``: the rows' texts, given when
        a rule reads them)."""
        n_rows, width = x.shape
        singles = [w[0] for w in self.procs.bad_words if len(w) == 1 and w[0] < width]
        if singles:
            x[:, torch.tensor(singles, device=x.device)] = float("-inf")
        if seqs is None:
            return x
        dev = x.device
        n = self.procs.no_repeat_ngram_size
        if n > 0 and seqs.shape[1] >= n:
            windows = seqs.unfold(1, n, 1)                                          # [rows, W, n]
            i = torch.arange(windows.shape[1], device=dev)
            tail = seqs.gather(1, (ends[:, None] - (n - 1) + torch.arange(n - 1, device=dev)).clamp(min=0))
            match = ((i[None, :] + n <= ends[:, None]) & (ends[:, None] >= n - 1) & (windows[:, :, n - 1] < width)
                     & (windows[:, :, : n - 1] == tail[:, None, :]).all(-1))         # [rows, W]
            banned = torch.zeros(n_rows, width, dtype=torch.int32, device=dev)
            banned.scatter_add_(1, windows[:, :, n - 1].clamp(max=width - 1), match.int())   # (sums: no race)
            x = x.masked_fill(banned > 0, float("-inf"))
        for w in self.procs.bad_words:
            if len(w) > 1 and w[-1] < width:
                x[:, w[-1]] = torch.where(self._ends_with(seqs, ends, w[:-1]), float("-inf"), x[:, w[-1]])
        return x


def _fill(x: torch.Tensor, rows: list[int], cols, value: float) -> None:
    """x[rows, cols] = value in place (host lists; ids past x's width skipped; nothing when either is empty)."""
    cols = [c for c in cols if c < x.shape[1]]
    if rows and cols:
        x[torch.tensor(rows, device=x.device)[:, None], torch.tensor(cols, device=x.device)[None, :]] = value


def _grown(seen: torch.Tensor, width: int) -> torch.Tensor:
    """``seen`` padded with False to at least ``width`` entries."""
    if seen.shape[0] >= width:
        return seen
    return torch.cat([seen, seen.new_zeros(width - seen.shape[0])])


def process_rows(streams, logits: torch.Tensor, ahead: torch.Tensor | None = None) -> torch.Tensor:
    """A batch's logits [nb, V] or [nb, n, V], row i processed by ``streams[i]`` (its own committed text) with
    ``ahead[i]`` [nb, m] (see :meth:`Prefix.apply`); unchanged when the streams have no processors."""
    if not streams or streams[0].prefix is None:
        return logits
    one = logits.dim() == 2
    rows = [s.process(logits[i : i + 1] if one else logits[i], None if ahead is None else ahead[i])
            for i, s in enumerate(streams)]
    return torch.cat(rows) if one else torch.stack(rows)


def process_nodes(stream, logits: torch.Tensor, tree, nodes) -> torch.Tensor:
    """A token tree's logits [len(nodes), V], row i after node ``nodes[i]`` (-1: the root), each processed with
    its own branch: the committed text, then the node's ancestors and the node (``tree``: a
    :class:`~fastdecode.decoding.tree.DraftTree`); unchanged without processors."""
    if stream.prefix is None or not len(nodes):
        return logits
    return stream.prefix.apply_paths(logits, [[tree.tokens[a] for a in tree.ancestors(n)] if n >= 0 else []
                                              for n in nodes])
