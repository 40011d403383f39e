"""Logits processors that depend on the text before a position: HF's ``repetition_penalty`` and its minimum
lengths (``min_new_tokens``, ``min_length``), applied as HF ``generate`` applies them, to the target's logits
and to the draft's alike.

Why they keep speculative decoding lossless: each one maps a position's raw logits and the tokens before it
to new logits, so the processed target is just another next-token distribution p'(x | prefix). Every row of
logits a loop forms has a known prefix (the committed text, then the drafts before that row), so each row is
processed with its own prefix and the verifiers keep p' exactly (the draft's q' only has to be what its
tokens were drawn from: processing it too keeps q' close to p', so drafts are accepted as often as before).

- repetition penalty r: a token that occurs in the prefix (prompt included) gets logit l * r if l < 0, else
  l / r (HF's ``RepetitionPenaltyLogitsProcessor``; the same float32 arithmetic, so greedy tokens equal HF's).
- minimum length: while fewer than ``min_new_tokens`` tokens precede a position in the generated text, every
  EOS id gets logit -inf there (HF's ``MinNewTokensLengthLogitsProcessor``; ``min_length`` counts the prompt
  and is turned into the same count).

The committed text's tokens are kept as a presence mask on the device, updated when the stream commits
tokens; a block of rows adds the tokens ahead of each row to it (a cumulative sum over the block).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Processors:
    """What to apply. ``eos_ids``: the ids a minimum length holds back."""

    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    eos_ids: tuple[int, ...] = ()

    @property
    def active(self) -> bool:
        return self.repetition_penalty != 1.0 or (self.min_new_tokens > 0 and bool(self.eos_ids))


class Prefix:
    """The processors' view of one generation (batch 1): which tokens the committed text holds, and how many
    of them are new. :meth:`commit` follows the stream; :meth:`apply` processes rows of logits."""

    def __init__(self, procs: Processors, tokens: list[int], prompt_len: int, device):
        self.procs = procs
        self.device = device
        self.seen = torch.zeros(0, dtype=torch.bool, device=device)
        self.new = 0
        self.commit(tokens)
        self.new = len(tokens) - prompt_len
        self._eos = torch.tensor(procs.eos_ids, dtype=torch.long, device=device)

    def commit(self, tokens: list[int]) -> None:
        """Tokens appended to the committed text."""
        if not tokens:
            return
        ids = torch.tensor(tokens, dtype=torch.long, device=self.device)
        self.seen = _grown(self.seen, max(tokens) + 1)
        self.seen[ids] = True
        self.new += len(tokens)

    def apply(self, logits: torch.Tensor, ahead: torch.Tensor | list[int] | None = None) -> torch.Tensor:
        """Processed float32 logits [n, V] for ``logits`` [n, V] whose last row's prefix is the committed text
        followed by ``ahead`` (tokens not yet committed: drafts, or queued steps' tokens), row j's the same
        minus the last n - 1 - j tokens of ``ahead`` (so row 0 of a verify block over g drafts, with ahead =
        the g drafts, is the committed text alone)."""
        n, width = logits.shape
        if ahead is None:
            ahead = torch.zeros(0, dtype=torch.long, device=logits.device)
        elif not isinstance(ahead, torch.Tensor):
            ahead = torch.tensor(ahead, dtype=torch.long, device=logits.device)
        m = ahead.shape[0]
        if m < n - 1:
            raise ValueError(f"{n} rows of logits need at least {n - 1} tokens ahead, got {m}")
        first = m - (n - 1)   # tokens of ``ahead`` in row 0's prefix
        x = logits.float()
        r = self.procs.repetition_penalty
        if r != 1.0:
            mask = _grown(self.seen, width)[:width].expand(n, width)
            if m:
                counts = torch.zeros(m + 1, width, dtype=torch.int32, device=x.device)
                counts[1:].scatter_(1, ahead.view(m, 1), 1)
                mask = mask | (counts.cumsum(0)[first:] > 0)
            x = torch.where(mask, torch.where(x < 0, x * r, x / r), x)
        held = self.procs.min_new_tokens - self.new - first   # rows 0 .. held - 1 may not end
        if held > 0 and self._eos.numel():
            eos = self._eos[self._eos < width]
            x = x.clone() if x is logits else x
            x[: min(held, n)].index_fill_(1, eos, float("-inf"))
        return x


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
    return torch.cat([stream.process(logits[i : i + 1], [tree.tokens[a] for a in tree.ancestors(n)] if n >= 0 else None)
                      for i, n in enumerate(nodes)])
