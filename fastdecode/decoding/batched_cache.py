"""The caches of batched decoding (:mod:`fastdecode.decoding.batched`, ``batched_tree``): one model's KV cache
over columns shared by every row, with a validity mask [B, columns] (:class:`_Cache`, on transformers'
DynamicCache; :class:`_SlotCache`, on the static engine's preallocated slot caches, eager or recorded),
left-padded blocks of pending tokens, and the assembly of the batch's output. See ``batched``'s docstring
for the design.
"""
from __future__ import annotations

import torch

from ..stats import DecodeStats
from . import hf_cache as kv
from .masks import additive, row_causal, with_window
from .sampling import check_logits
from .static import bucket as _bucket
from .static_cache import SlotCache, forward_at, runner_for, static_support_problem
from .static_windows import cache_layer_types
from .stream import TokenStream


class _Cache:
    """One model's KV cache over shared columns plus its validity mask [B, C] and valid counts [B].

    Sliding-window models: transformers applies a window by column, which is wrong once a row has invalid
    columns inside its text (rejected drafts), so for them the cache keeps each column's position [B, C] and
    builds the 4D mask itself, the window applied by position (one mask when every layer is windowed, a dict
    {layer type: mask} when windowed and full layers mix: the form those models take)."""

    def __init__(self, model, batch: int, device):
        self.model = model
        self.cache = kv.new_cache(model, rewindable=False)
        self.mask = torch.zeros(batch, 0, dtype=torch.long, device=device)
        self.valid = torch.zeros(batch, dtype=torch.long, device=device)
        self.window, self.layer_types = kv.attention_layout(model)
        self.pos = torch.zeros(batch, 0, dtype=torch.long, device=device)   # each column's position
        self.dtype = next(model.parameters()).dtype
        self._check_at = 64   # (make_room)

    @property
    def columns(self) -> int:
        return self.mask.shape[1]

    def attention(self, allow: torch.Tensor, qpos: torch.Tensor):
        """The 4D mask(s) of a forward: allow [B, n, C] (which columns each new column may see, the window not
        yet applied), qpos [B, n] the new columns' positions (self.pos already holds them)."""
        return with_window(allow, qpos, self.pos, self.window, self.layer_types, self.dtype)

    def _append(self, new_mask: torch.Tensor) -> torch.Tensor:
        """Append the validity new_mask [B, n] of a forward's columns; returns their positions [B, n] (each row
        counts its valid columns, as HF does with left padding; an invalid column gets 1, HF's value for
        padding: it is never attended)."""
        pos = (self.valid[:, None] + new_mask.cumsum(-1) - 1).masked_fill(new_mask == 0, 1)
        self.mask = torch.cat([self.mask, new_mask], 1)
        self.valid = self.valid + new_mask.sum(-1)
        return pos

    def forward(self, ids: torch.Tensor, new_mask: torch.Tensor, keep: int) -> torch.Tensor:
        """Feed ids [B, n] whose validity is new_mask [B, n]; returns logits [B, keep, V]."""
        c0, n = self.columns, ids.shape[1]
        pos = self._append(new_mask)
        self.pos = torch.cat([self.pos, pos], 1)
        if self.window is None:
            attn = self.mask   # transformers builds the causal + padding mask
        else:
            attn = self.attention(row_causal(self.mask.bool(), c0 + torch.arange(n, device=ids.device)), pos)
        return kv.forward(self.model, ids, self.cache, position_ids=pos, attention_mask=attn, logits_to_keep=keep)

    def invalidate(self, first: int, keep: torch.Tensor) -> None:
        """Columns first.. (to the end): row r keeps the first keep[r] of them valid, the rest become invalid."""
        n = self.columns - first
        if n <= 0:
            return
        drop = torch.arange(n, device=keep.device)[None] >= keep[:, None]
        old = self.mask[:, first:]
        self.valid = self.valid - (old * drop).sum(-1)
        self.mask[:, first:] = old.masked_fill(drop, 0)

    def _used_columns(self) -> int:
        """The columns up to the last one valid in some row."""
        used = self.mask.any(0).nonzero()
        return int(used[-1]) + 1 if used.numel() else 0

    def trim(self) -> None:
        """Crop trailing columns that are invalid in every row."""
        last = self._used_columns()
        if last < self.columns:
            kv.crop(self.cache, last)
            self.mask = self.mask[:, :last]
            self.pos = self.pos[:, :last]

    def select(self, rows: torch.Tensor) -> None:
        for layer in self.cache.layers:
            kv.select_rows(layer, rows)
        self.mask = self.mask.index_select(0, rows)
        self.valid = self.valid.index_select(0, rows)
        self.pos = self.pos.index_select(0, rows)

    def make_room(self, n: int) -> None:
        """Before a step (``n``: its columns at most; this cache grows as needed): :meth:`compact` once the
        invalid columns that rejected drafts leave outnumber the valid ones, so that memory and attention follow
        the text, not the drafts. The longest row's count is read from the device only when the columns reach
        twice its last reading."""
        if self.columns >= self._check_at:
            longest = int(self.valid.max())
            if self.columns > 2 * longest:
                self.compact(longest)
            self._check_at = max(2 * longest, self.columns + 1, 64)

    def compact(self, longest: int | None = None) -> None:
        """Each row's valid columns moved, in order, to the right end of the narrowest width that holds the
        longest row's (left padding, as after the prompts); the invalid columns other rows' rejected drafts left
        are dropped. Keys, values, validity and positions move together; the order of a row's columns (its
        causal order) and each column's position are kept, so every query sees the same keys at the same
        positions as before. ``longest``: the longest row's valid count, when the caller has read it already."""
        C = self.columns
        W = longest if longest is not None else (int(self.valid.max()) if C else 0)
        if W >= C:
            return
        valid = self.mask.bool()
        order = torch.argsort(valid.long() * C + torch.arange(C, device=valid.device), dim=1)   # invalid, then valid
        idx = order[:, C - W:]                                                                  # [nb, W]
        self._permute(0, idx)
        self.mask = valid.gather(1, idx).long()
        if self.pos is not None:
            self.pos = self.pos.gather(1, idx)

    def _permute(self, first: int, idx: torch.Tensor) -> None:
        """Columns first.. of row r replaced by its columns first + idx[r] (idx [B, n], n at most the columns
        from first on: fewer drops the rest), in every layer (new tensors)."""
        for layer in self.cache.layers:
            if getattr(layer, "keys", None) is None or not layer.keys.numel():
                continue
            kv.permute_columns(layer, first, idx)


class _SlotCache(_Cache):
    """The same columns and masks on the static engine's preallocated cache (``static_cache.SlotCache``):
    a forward writes its n columns at slots start .. start + n - 1 (start = the column count, one device
    scalar shared by all layers), a trim only moves that start back (the next forward overwrites the
    slots), and the attention mask is built from the rows' validity: causal over slots, the row's validity,
    and each column attending to itself (so that a padding column, with no valid key before it, stays finite).

    mode "eager": plain forwards on a cache of the batch's own rows, finished rows selected away.
    mode "cudagraphs" / "inductor" (recorded forwards): the cache is a
    :class:`~fastdecode.decoding.static_cache.StaticRunner`'s, kept on the model across calls, with
    ``bucket(B)`` rows; every forward after the prompts' has the fixed shape [bucket(B), bucket(n)] and goes
    through the runner's recording (one graph per (bucketed B, bucketed n), the mask built inside the graph
    from a [bucket(B), capacity] validity tensor, the positions an input). A finished row is not moved: its
    cache row becomes an inert padding row (token 0, nothing valid, it sees only itself), as are the rows past
    B; ``rows`` maps each active row to its cache row. When the active rows fit in half the bucket, they move
    (one copy per layer) to the runner of that smaller bucket, so finished rows stop costing compute."""

    def __init__(self, model, batch: int, device, capacity: int, mode: str = "eager", role: str = "target"):
        problem = static_support_problem(model)
        if problem:  # pragma: no cover - generate() checks first
            raise ValueError(problem)
        if getattr(model, "_fastdecode_lambda", None) is not None:  # pragma: no cover - generate() sends these
            raise ValueError("Lambda attention has no batched cache (its batches run row by row: batched_rows)")
        self.model, self.mode, self.role = model, mode, role
        self.window, self.layer_types = kv.attention_layout(model)
        # each column's position: kept for a model with a sliding window only (its masks need them)
        self.pos = torch.zeros(batch, 0, dtype=torch.long, device=device) if self.window is not None else None
        self.dtype = next(model.parameters()).dtype
        self.mask = torch.zeros(batch, 0, dtype=torch.long, device=device)
        self.valid = torch.zeros(batch, dtype=torch.long, device=device)
        self.runner = None
        if mode == "eager":
            self.cache = SlotCache(len(cache_layer_types(model)), capacity, device)
            self.capacity = capacity
            self.slots = torch.arange(capacity, device=device)
        else:
            self.capacity = -(-capacity // 128) * 128   # similar calls share the runner and its graphs
            self._use_runner(_bucket(batch))
            self.rows = torch.arange(batch, device=device)   # cache row of each active row

    def _use_runner(self, rows: int) -> None:
        self.runner = runner_for(self.model, self.capacity, self.mode, batch=rows, role=f"{self.role}{rows}")
        self.cache = self.runner.cache

    def forward(self, ids: torch.Tensor, new_mask: torch.Tensor, keep: int) -> torch.Tensor:
        start = self.columns
        pos = self._append(new_mask)
        if self.pos is not None:
            self.pos = torch.cat([self.pos, pos], 1)
        return self._feed(ids, pos, start, keep)

    def _feed(self, ids: torch.Tensor, pos: torch.Tensor, start: int, keep: int,
              allow: torch.Tensor | None = None) -> torch.Tensor:
        """Score ids / pos [nb, n] (the active rows) written at columns start ..; self.mask already holds them.
        allow None: causal over each row's valid columns (and itself); else [nb, n, start + n] the columns each
        query sees (trees). self.pos (windowed models) already holds the new columns' positions. Returns logits
        [nb, keep, V] (the last ``keep`` of the n)."""
        n = ids.shape[1]
        cap = self.capacity if self.runner is None else self.runner.capacity
        if start + n > cap:  # pragma: no cover - capacity covers the worst case
            raise RuntimeError(f"static cache overflow: {start} + {n} > capacity {cap}")
        if self.runner is not None:
            return self._recorded(ids, pos, start, keep, allow)
        # plain forwards attend to the slots below start + n only (the cache returns that many keys)
        if allow is None:
            allow = row_causal(self.mask.bool(), start + self.slots[:n])              # [nb, n, start + n]
        self.cache.start.fill_(start)
        self.cache.width = start + n
        mask = additive(allow, self.dtype) if self.pos is None else self.attention(allow, pos)
        return forward_at(self.model, self.cache, ids, start + self.slots[:n], pos, mask, keep)

    def _recorded(self, ids: torch.Tensor, pos: torch.Tensor, start: int, keep: int,
                  allow: torch.Tensor | None) -> torch.Tensor:
        """ids / pos [nb, n] of the active rows scattered into the runner's [bucket(B), bucket(n)] shape (padding:
        token 0 at position 1, seeing only itself). The prompts' forward (start 0, any length) and a forward that
        would not fit padded run plainly."""
        run, n, dev = self.runner, ids.shape[1], ids.device
        record = start > 0 and start + _bucket(n) <= run.capacity
        w = _bucket(n) if record else n
        full_ids = torch.zeros(run.batch, w, dtype=torch.long, device=dev)
        full_ids[self.rows, :n] = ids
        full_pos = torch.ones(run.batch, w, dtype=torch.long, device=dev)
        full_pos[self.rows, :n] = pos
        if allow is None:
            visible = torch.zeros(run.batch, run.capacity, dtype=torch.bool, device=dev)
            visible[self.rows, : self.columns] = self.mask.bool()
        else:
            visible = torch.zeros(run.batch, w, run.capacity, dtype=torch.bool, device=dev)
            visible[self.rows, :n, : start + n] = allow
            j = torch.arange(w, device=dev)
            visible[:, j, start + j] = True
        kpos = None
        if self.pos is not None:   # the key positions (windowed models); padding columns at position 1
            kpos = torch.ones(run.batch, run.capacity, dtype=torch.long, device=dev)
            kpos[self.rows, : self.columns] = self.pos
        logits = run.batch_forward(full_ids, start, full_pos, visible, record=record, kpos=kpos)  # [bucket(B), w, V]
        out = logits[self.rows, n - keep : n]
        if self.role == "target":   # (a host read; the draft's forwards are left unread, as the target decides)
            check_logits(out)
        return out

    def trim(self) -> None:
        used = self._used_columns()
        self.mask = self.mask[:, :used]   # slots past it are overwritten by the next forward
        if self.pos is not None:
            self.pos = self.pos[:, :used]

    def make_room(self, n: int) -> None:
        """Before a step that adds up to ``n`` columns: if they would not fit the capacity, :meth:`compact`.
        Rejected drafts leave invalid columns in some rows while others keep theirs, so the columns can grow
        faster than any row's text; sizing the cache for that worst case (every step's drafts rejected in some
        row: max_new_tokens x (drafts + 2) columns) would allocate many times the memory a row's text needs."""
        if self.columns + n > (self.capacity if self.runner is None else self.runner.capacity):
            self.compact()

    def _permute(self, first: int, idx: torch.Tensor) -> None:
        """Columns first .. first + n - 1 of each active row replaced by its columns first + idx[r] (idx [nb, n],
        n at most the columns from first on), in place in the active rows' cache rows."""
        nb, n = idx.shape
        span = self.columns - first
        rows = self.rows if self.runner is not None else torch.arange(nb, device=idx.device)
        for layer in self.cache.layers:
            if not getattr(layer, "is_initialized", False):
                continue
            for t in (layer.keys, layer.values):                                  # [rows, H, capacity, D]
                src = t[rows, :, first : first + span]                            # [nb, H, span, D] (a copy)
                t[rows, :, first : first + n] = src.gather(2, idx[:, None, :, None].expand(nb, t.shape[1], n,
                                                                                         t.shape[3]))

    def select(self, rows: torch.Tensor) -> None:
        self.mask = self.mask.index_select(0, rows)
        self.valid = self.valid.index_select(0, rows)
        if self.pos is not None:
            self.pos = self.pos.index_select(0, rows)
        if self.runner is None:   # the kept rows (increasing) moved up in place, their used columns only
            nb, c = rows.shape[0], self.columns
            for layer in self.cache.layers:
                if getattr(layer, "is_initialized", False):
                    for name in ("keys", "values"):
                        t = getattr(layer, name)
                        t[:nb, :, :c] = t[rows, :, :c]
                        setattr(layer, name, t[:nb])
            return
        self.rows = self.rows.index_select(0, rows)
        nb, B = rows.shape[0], self.runner.batch
        if B > 1 and nb and _bucket(nb) <= B // 2:   # the rows fit a smaller bucket: move them there
            old = self.runner.cache
            self._use_runner(_bucket(nb))
            c = self.columns
            for src, dst in zip(old.layers, self.cache.layers):
                if not getattr(src, "is_initialized", False):
                    continue
                if not dst.is_initialized:   # allocated for all the new runner's rows (its batch), not nb alone
                    dst.lazy_initialization(src.keys[: self.runner.batch], src.values[: self.runner.batch])
                dst.keys[:nb, :, :c] = src.keys[self.rows, :, :c]
                dst.values[:nb, :, :c] = src.values[self.rows, :, :c]
            self.rows = torch.arange(nb, device=self.rows.device)


def static_capacity(prompt_width: int, max_new_tokens: int, step: int) -> int:
    """Columns of a batch's static caches: every row's text (a row's valid columns never exceed the prompts'
    width plus max_new_tokens), one step's worst growth ``step``, and room for invalid columns (a quarter of
    the text, at least four steps' worth) so that :meth:`_SlotCache.compact` runs once in many steps."""
    text = prompt_width + max_new_tokens
    return text + step + max(4 * step, text // 4)


def _block(lists: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (ids [B, W], mask [B, W]) (padding id 0, masked out)."""
    w = max(len(x) for x in lists)
    ids = torch.tensor([[0] * (w - len(x)) + x for x in lists], dtype=torch.long, device=device)
    mask = torch.tensor([[0] * (w - len(x)) + [1] * len(x) for x in lists], dtype=torch.long, device=device)
    return ids, mask


def batch_output(streams: list[TokenStream], per_row: list[dict], batch_steps: int, stats: DecodeStats,
                 input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """Record the per-row and batch totals in ``stats`` and return the sequences [B, L + longest new]: each
    row's prompt (with its left padding) and new tokens, ``pad_token_id`` after its end (HF's convention)."""
    B, L = input_ids.shape
    for r, s in enumerate(streams):
        per_row[r]["new_tokens"] = s.new_tokens
    stats.new_tokens = sum(s.new_tokens for s in streams)
    stats.extra["per_row"] = per_row
    stats.extra["batch_steps"] = batch_steps
    longest = max(s.new_tokens for s in streams)
    out = torch.full((B, L + longest), pad_token_id, dtype=torch.long, device=input_ids.device)
    out[:, :L] = input_ids
    for r, s in enumerate(streams):
        if s.new_tokens:
            out[r, L : L + s.new_tokens] = torch.tensor(s.tokens[s.prompt_len:], device=input_ids.device)
    return out
