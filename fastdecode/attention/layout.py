"""Host-side bookkeeping of a :class:`~fastdecode.attention.lambda_cache.LambdaLayer`: which logical tokens it
stores, and at which true RoPE positions.

Words: the *logical sequence* is what the caller sees (``get_seq_length``; the columns of a caller's 4D
mask; the indices ``crop`` and ``select`` take). A *slot* is one stored key/value row. For every slot
a :class:`Layout` records its logical index (``idx``, increasing) and its true position (``pos``, the
position id the model rotated the key at). For a plain sequence pos == idx; with token trees it is not:
multi-draft decoding appends tree nodes at position root + depth (siblings share a position) and later
keeps only the accepted path (``select``), whose tokens keep their positions under new indices.

*Protected* slots are the first ``num_global`` logical tokens (never evicted). *Eviction* drops the
oldest stored tokens that no query can need any more: the leading run of unprotected slots with
``num_global <= pos < threshold``, where threshold = (the newest stored position + 1) - (window - 1)
- max_rollback before a chunk is appended (queries come after everything stored: the causal rule every
fastdecode loop follows), and (the chunk's last position + 1) - (window - 1) - max_rollback after a
chunk longer than the window (a prefill, or a large tree). Tree nodes carry the newest positions, so
they are never evicted before the context they hang off; they are transient anyway (``select`` drops
the rejected ones after each step).

Layouts are immutable and memoise the transitions transformers drives layer by layer (``append``,
``attach``): the layers of one cache undergo the same operations in lockstep, so layer 0 computes each
new layout and the other layers get the same object, together with the per-forward device tensors the
attention function caches on it (:meth:`Layout.memo`); ``crop`` and ``select`` are computed once per
cache by :class:`~fastdecode.attention.lambda_cache.LambdaCache` for all layers sharing a layout. A layout
references its successors, never its predecessors, so old layouts are freed as soon as no layer holds
them.
"""
from __future__ import annotations

import array
from bisect import bisect_left
from typing import Callable

import torch


class Layout:
    """Stored slots of one layer: ``idx`` [m] logical indices (increasing), ``pos`` [m] true positions, the
    logical ``length``, and ``evicted_pos``: an upper bound on the position of any evicted token still in
    the logical sequence (-1 when none is missing). ``pending``: the last ``pending`` slots were appended
    by ``update`` and carry provisional positions (their logical indices) until the attention function
    attaches the forward's position ids."""

    __slots__ = ("spec", "idx", "pos", "length", "evicted_pos", "pending", "max_pos", "_next", "_memo")

    def __init__(self, spec: tuple[int, int, int], idx: list[int], pos: list[int], length: int,
                 evicted_pos: int = -1, pending: int = 0):
        self.spec = spec  # (window, num_global, max_rollback)
        self.idx, self.pos, self.length = idx, pos, length
        self.evicted_pos = evicted_pos if length > len(idx) else -1
        self.pending = pending
        self.max_pos = max(pos) if pos else -1
        self._next: dict = {}
        self._memo: dict = {}

    # -- helpers --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.idx)

    def protected(self) -> int:
        """Number of leading slots holding the first num_global logical tokens."""
        return bisect_left(self.idx, self.spec[1])

    def missing(self) -> int:
        """Logical tokens that were evicted (in the sequence, not stored)."""
        return self.length - len(self.idx)

    def memo(self, key, make: Callable):
        """Per-layout cache of derived values (device tensors of a forward), shared by all layers."""
        out = self._memo.get(key)
        if out is None:
            out = self._memo[key] = make()
        return out

    def _transition(self, key, make: Callable):
        out = self._next.get(key)
        if out is None:
            out = self._next[key] = make()
        return out

    def _evict_run(self, threshold: int) -> int:
        # end of the leading run of unprotected slots with num_global <= pos < threshold
        j, n_glob, pos = self.protected(), self.spec[1], self.pos
        while j < len(pos) and n_glob <= pos[j] < threshold:
            j += 1
        return j

    def _without(self, g: int, e: int) -> Layout:
        # the same layout without slots g..e-1 (evicted)
        if e == g:
            return self
        ev = max(self.evicted_pos, max(self.pos[g:e]))
        return Layout(self.spec, self.idx[:g] + self.idx[e:], self.pos[:g] + self.pos[e:], self.length, ev,
                      self.pending)

    def _threshold(self, newest: int) -> int:
        window, _, rollback = self.spec
        return newest + 1 - (window - 1) - rollback

    def check_next_query(self, action: str) -> None:
        """Raise ValueError unless the next query (at the newest stored position + 1) still has its whole
        window and every global: no evicted token may be needed."""
        window, n_glob, rollback = self.spec
        if not self.missing():
            return
        if self.protected() < min(n_glob, self.length):
            raise ValueError(f"{action} must keep the first {n_glob} (global) tokens; some of them were dropped")
        last_evicted = self.idx[-1] != self.length - 1 if self.idx else True
        needed_from = self.pos[-1] + 1 - (window - 1) if self.idx else 0
        if last_evicted or self.evicted_pos >= needed_from:
            raise ValueError(
                f"cannot {action}: the next query needs tokens from position {needed_from} on, but tokens up to "
                f"position {self.evicted_pos} were evicted (the cache keeps {n_glob} global and window - 1 + "
                f"max_rollback = {window - 1 + rollback} recent positions: raise LambdaAttention.max_rollback "
                "above the draft length)")

    # -- transitions (memoised; each returns what the layer must do to its tensors) ------------------
    def append(self, c: int) -> tuple[tuple[int, int], Layout]:
        """Evict what the chunk cannot need, then append c slots with provisional positions.
        Returns ((g, e): drop slots g..e-1 before appending, new layout)."""
        def make():
            g = self.protected()
            e = self._evict_run(self._threshold(self.max_pos))
            base = self._without(g, e)
            new = list(range(self.length, self.length + c))
            return (g, e), Layout(self.spec, base.idx + new, base.pos + new, self.length + c, base.evicted_pos, c)
        return self._transition(("append", c), make)

    def attach(self, qpos: tuple[int, ...]) -> tuple[Layout, tuple[int, int], Layout]:
        """Give the pending slots their true positions ``qpos`` (the forward's position ids).
        Returns (full layout of the keys this forward attends to, (g, e): slots to drop after the
        forward, stored layout); the drop trims a chunk longer than the window to what later queries
        can need."""
        def make():
            c = len(qpos)
            if c != self.pending:
                raise ValueError(f"Lambda cache: {c} position ids for a chunk of {self.pending} new keys")
            window, n_glob, _ = self.spec
            if self.missing() and c and self.evicted_pos >= min(qpos) - (window - 1):
                raise ValueError(
                    f"Lambda cache: queries from position {min(qpos)} need keys from position "
                    f"{min(qpos) - (window - 1)} on, but tokens up to position {self.evicted_pos} were evicted "
                    "(queries must come after the cached tokens; raise LambdaAttention.max_rollback)")
            full = Layout(self.spec, self.idx, self.pos[:len(self.pos) - c] + list(qpos), self.length,
                          self.evicted_pos)
            if c > window:
                g = full.protected()
                e = full._evict_run(full._threshold(max(qpos)))
                return full, (g, e), full._without(g, e)
            return full, (0, 0), full
        return self._transition(("attach", qpos), make)

    def crop(self, n: int) -> tuple[int, Layout]:
        """Keep the first n logical tokens. Returns (slots kept: a prefix, new layout)."""
        k = bisect_left(self.idx, n)
        out = Layout(self.spec, self.idx[:k], self.pos[:k], n, self.evicted_pos)
        out.check_next_query(f"roll the Lambda cache back to {n} tokens")
        return k, out

    def select(self, keep: torch.Tensor) -> tuple[list[int], Layout]:
        """Keep the logical tokens ``keep`` [n] (CPU long, increasing) as the new sequence 0..n-1 (tree
        paths). Returns (slots to keep, in order; new layout). Tokens keep their true positions.
        O(m log n) beyond the checks, whatever the logical length."""
        n = keep.shape[0]
        if n > 1 and not bool((keep[1:] > keep[:-1]).all()):
            raise ValueError("select positions must be increasing")
        if n and (int(keep[0]) < 0 or int(keep[-1]) >= self.length):
            raise ValueError(f"select positions must lie in 0..{self.length - 1}, got {int(keep[0])}..{int(keep[-1])}")
        idx = host_long(self.idx)
        at = torch.searchsorted(keep, idx)  # where each stored token would sit in keep
        found = (at < n) & (keep[at.clamp(max=max(n - 1, 0))] == idx) if n else torch.zeros_like(idx, dtype=torch.bool)
        slots = found.nonzero().flatten().tolist()
        out = Layout(self.spec, at[found].tolist(), [self.pos[j] for j in slots], n, self.evicted_pos)
        out.check_next_query("select these tokens")
        return slots, out

def host_long(values: list[int]) -> torch.Tensor:
    """[n] long CPU tensor from host ints (through a buffer: several times faster than torch.tensor)."""
    if not values:
        return torch.zeros(0, dtype=torch.long)
    return torch.frombuffer(array.array("q", values), dtype=torch.long)


def empty_layout(window: int, num_global: int, max_rollback: int) -> Layout:
    """The layout of an empty layer."""
    return Layout((window, num_global, max_rollback), [], [], 0)
