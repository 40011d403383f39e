"""A bounded KV cache for Lambda attention: the global tokens plus a recent window, with logical lengths.

Layout of every layer (``keys``/``values`` are [B, Hkv, m, D], as in transformers' DynamicLayer):

    [ the first g = min(num_global, length) tokens | a contiguous run of recent tokens ending at length - 1 ]

Keys are stored exactly as the model produced them, i.e. rotated at their true positions; the attention
function moves the few global keys back to position 0 when it needs the distance limit (see
:mod:`fastdecode.attention.context`), so no RoPE state lives in the cache. ``length`` is the *logical*
number of tokens seen (what ``get_seq_length`` and :func:`fastdecode.decoding.cache.cache_length`
report); the physical size m stays bounded:

- before appending a chunk that starts at logical position s, recent tokens older than
  s - (window - 1) - max_rollback are evicted: no query of the chunk can see them, and no rollback of up
  to ``max_rollback`` tokens (speculative decoding rejecting drafts) can need them;
- after a long chunk (more than ``window`` tokens, i.e. a prefill), only its last
  window - 1 + max_rollback tokens are kept, so a long prompt never stays in memory.

So one layer holds at most ``num_global + window - 1 + max_rollback + chunk`` tokens during a forward
and ``num_global + window - 1 + max_rollback + min(last chunk, window)`` between forwards; a decode
step needs ``num_global + window + max_rollback``. Rolling back (``crop``) to any length >=
(start of the last chunk, if it had at most ``window`` tokens, else the current length) - max_rollback,
and keeping tree paths of the last chunk (``select_positions``), are exact; anything that would leave
the next query without its whole window raises ``ValueError`` instead of silently attending to fewer
tokens.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer


class LambdaLayer(DynamicLayer):
    """One layer of :class:`LambdaCache` (see the module docstring for the layout)."""

    is_sliding = False

    def __init__(self, window: int, num_global: int, max_rollback: int = 64):
        super().__init__()
        self.window, self.num_global, self.max_rollback = window, num_global, max_rollback
        self.length = 0  # logical tokens seen

    # -- layout helpers -------------------------------------------------------------------------
    def _stored(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[-2])

    def _globals(self) -> int:
        return min(self.num_global, self._stored())

    def first_local(self) -> int:
        """Logical index of the first stored recent token (== number of globals when nothing was evicted)."""
        return self.length - (self._stored() - self._globals())

    def positions(self) -> torch.Tensor:
        """Logical positions of the stored tokens [m] (long, CPU)."""
        g = self._globals()
        return torch.cat([torch.arange(g), torch.arange(self.first_local(), self.length)])

    def _keep(self, idx: list[int] | slice) -> None:
        if isinstance(idx, slice):
            self.keys, self.values = self.keys[..., idx, :], self.values[..., idx, :]
        else:
            t = torch.tensor(idx, dtype=torch.long, device=self.keys.device)
            self.keys, self.values = self.keys.index_select(-2, t), self.values.index_select(-2, t)

    # -- transformers' layer API ----------------------------------------------------------------
    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Append a chunk [B, Hkv, c, D]; returns all keys/values its queries may need (old + new)."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.keys, self.values = key_states[..., :0, :], value_states[..., :0, :]
        m, g, c = self._stored(), self._globals(), key_states.shape[-2]
        recent = self.window - 1 + self.max_rollback  # recent tokens kept before the chunk
        lo = max(g, m - recent)
        if lo > g:  # evict what neither this chunk's queries nor a rollback can need (one copy)
            keys = torch.cat([self.keys[..., :g, :], self.keys[..., lo:, :], key_states], dim=-2)
            values = torch.cat([self.values[..., :g, :], self.values[..., lo:, :], value_states], dim=-2)
        else:
            keys = torch.cat([self.keys, key_states], dim=-2)
            values = torch.cat([self.values, value_states], dim=-2)
        self.length += c
        g2 = min(self.num_global, keys.shape[-2])
        if c > self.window and keys.shape[-2] > g2 + recent:  # long chunk (prefill): keep its tail only
            self.keys = torch.cat([keys[..., :g2, :], keys[..., -recent:, :]], dim=-2)
            self.values = torch.cat([values[..., :g2, :], values[..., -recent:, :]], dim=-2)
        else:
            self.keys, self.values = keys, values
        return keys, values

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self._stored() + query_length, 0

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        super().reset()
        self.keys = self.values = None
        self.is_initialized = False
        self.length = 0

    def _check_window(self, new_length: int, first_local: int) -> None:
        g = min(self.num_global, new_length)
        needed_from = max(g, new_length - (self.window - 1))
        if needed_from < new_length and first_local > needed_from:
            raise ValueError(
                f"cannot roll the Lambda cache back to {new_length} tokens: the next query needs tokens "
                f"{needed_from}..{new_length - 1}, but tokens before {first_local} were evicted (the cache keeps "
                f"{self.num_global} global and window - 1 + max_rollback = {self.window - 1 + self.max_rollback} "
                "recent tokens: raise LambdaAttention.max_rollback above the draft length)")

    def crop(self, max_length: int) -> None:
        """Keep the first ``max_length`` logical tokens; a negative value removes that many (both forms
        are accepted, as transformers 5.17 and 5.24 differ)."""
        new_length = self.length + max_length if max_length < 0 else max_length
        if new_length >= self.length or not self.is_initialized:
            return
        new_length = max(new_length, 0)
        g, first = self._globals(), self.first_local()
        if new_length <= g:
            self._keep(slice(0, new_length))
        else:
            self._check_window(new_length, first)
            self._keep(slice(0, self._stored() - (self.length - max(new_length, first))))
        self.length = new_length

    def select_positions(self, positions: list[int]) -> None:
        """Keep the logical tokens ``positions`` (in that order) as the new sequence 0..n-1."""
        n, g, first = len(positions), self._globals(), self.first_local()
        gk = min(g, n)
        if positions[:gk] != list(range(gk)):
            raise ValueError(f"select must keep the {gk} global tokens in place, got positions {positions[:gk]}")
        k0 = n
        while k0 > gk and first <= positions[k0 - 1] < self.length:
            k0 -= 1
        self._check_window(n, k0)
        phys = list(range(gk)) + [g + (p - first) for p in positions[k0:]]
        if positions[k0:] != sorted(set(positions[k0:])):
            raise ValueError("select positions must be increasing")
        self._keep(phys)
        self.length = n


class LambdaCache(Cache):
    """KV cache of a model under :func:`fastdecode.attention.lambda_attention`; one :class:`LambdaLayer` per layer."""

    def __init__(self, num_layers: int, window: int, num_global: int, max_rollback: int = 64):
        super().__init__(layers=[LambdaLayer(window, num_global, max_rollback) for _ in range(num_layers)])
        self.window, self.num_global, self.max_rollback = window, num_global, max_rollback

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.layers[layer_idx].get_seq_length() if layer_idx < len(self.layers) else 0

    def crop(self, max_length: int) -> None:
        for layer in self.layers:
            layer.crop(max_length)

    def select_positions(self, positions: torch.Tensor | list[int]) -> None:
        """Keep only the given logical positions [n] (in that order) in every layer (multi-draft paths)."""
        pos = positions.tolist() if isinstance(positions, torch.Tensor) else list(positions)
        for layer in self.layers:
            if layer.is_initialized:
                layer.select_positions(pos)

    def stored_tokens(self) -> int:
        """Physical tokens held by the largest layer (at most num_global + window - 1 + max_rollback + the
        last chunk's length, capped at window, between forwards)."""
        return max((layer._stored() for layer in self.layers), default=0)

    def nbytes(self) -> int:
        """Bytes held by all stored keys and values."""
        return sum(t.numel() * t.element_size() for layer in self.layers if layer.is_initialized
                   for t in (layer.keys, layer.values))
