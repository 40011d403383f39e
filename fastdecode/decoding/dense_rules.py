"""The logits processors a recorded graph applies (the static engine's recorded speculative step, see
:mod:`fastdecode.decoding.static_step`): those of :attr:`Processors.dense
<fastdecode.decoding.processors.Processors.dense>`, as device operations over whole rows."""
from __future__ import annotations

import torch


class DenseRules:
    """The rules of :attr:`Processors.dense` as device operations over whole rows, with no host read and shapes
    fixed by the rows, so that a recorded graph (the static engine's draft chain and verification) applies them:
    the same values as :meth:`Prefix.apply` bit for bit (the same float operations on the same entries), from
    a mask of the ids each row's text holds and each row's new-token count. The column tensors they index with
    are made by :meth:`columns`, outside any recording."""

    # (device, width, key) -> columns: kept for the process, since a recorded CUDA graph reads them by address
    # after the call that recorded it has returned
    _COLUMNS: dict = {}

    def __init__(self, procs: Processors, device):
        self.procs = procs
        self.device = device
        self.key = (procs.repetition_penalty, procs.bad_words, procs.eos_ids, procs.min_new_tokens)

    def columns(self, width: int):
        """(banned ids, EOS ids held back by the minimum length) below ``width`` as device tensors, or None."""
        at = (str(self.device), width, self.key)
        if at not in self._COLUMNS:
            def ids(xs):
                xs = sorted({x for x in xs if x < width})
                return torch.tensor(xs, dtype=torch.long, device=self.device) if xs else None
            hold = self.procs.eos_ids if self.procs.min_new_tokens > 0 else ()
            self._COLUMNS[at] = (ids(w[0] for w in self.procs.bad_words), ids(hold))
        return self._COLUMNS[at]

    def apply(self, logits: torch.Tensor, seen: torch.Tensor, new: torch.Tensor, cols) -> torch.Tensor:
        """Processed float32 rows for ``logits`` [n, V]: ``seen`` [n, V] bool, the ids in row i's text; ``new``
        [n] long, its new-token count; ``cols``: :meth:`columns` of V."""
        x = logits.float().clone()
        r = self.procs.repetition_penalty
        if r != 1.0:
            x = torch.where(seen, torch.where(x < 0, x * r, x / r), x)
        banned, hold = cols
        if banned is not None:
            x.index_fill_(1, banned, float("-inf"))
        if hold is not None:
            x[:, hold] = torch.where((new < self.procs.min_new_tokens)[:, None], float("-inf"), x[:, hold])
        return x

    def chain(self, logits: torch.Tensor, seen: torch.Tensor, new: torch.Tensor, ahead: torch.Tensor, cols):
        """:meth:`apply` to the rows of a verify block [g + 1, V] over ``ahead`` [g] (row j's text: the committed
        one, ``seen`` [V] and ``new`` [1], then ahead[:j])."""
        n, width = logits.shape
        hits = torch.zeros(n, width, dtype=torch.int32, device=logits.device)
        if n > 1:
            hits[1:].scatter_(1, ahead[: n - 1, None].clamp(max=width - 1), (ahead[: n - 1, None] < width).int())
        rows = (hits.cumsum(0) > 0) | seen[None, :]
        return self.apply(logits, rows, new + torch.arange(n, device=logits.device), cols)

    @staticmethod
    def with_token(seen: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``seen`` [V] with the id ``x`` [1] added (an id past the mask's width adds nothing)."""
        width = seen.shape[0]
        return seen | torch.zeros_like(seen).scatter_(0, x.view(1).clamp(max=width - 1), (x.view(1) < width))
