"""The layer of every static cache: transformers' ``StaticLayer`` (its allocation, and its static-address
marking for ``torch.compile``) writing a forward's n keys and values at slots the runner computed once for all
layers, so that a step sets them with one device op instead of one per layer. The static slot cache
(``static_cache``), the windowed layers' rings (``static_windows``) and Lambda's ring (``static_lambda``) differ
only in those slots and in what a layer hands to attention."""
from __future__ import annotations

import torch
from transformers.cache_utils import StaticLayer


class WrittenLayer(StaticLayer):
    """A layer of ``size`` slots in the cache ``owner`` (which holds the shared device scalar ``start``)."""

    def __init__(self, size: int, owner):
        super().__init__(max_cache_len=size)
        self.owner = owner

    def slots(self, n: int, device) -> torch.Tensor:
        """The slots [n] the forward under way writes."""
        raise NotImplementedError

    def visible(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values attention sees (all of them unless a subclass narrows them)."""
        return self.keys, self.values

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        slots = self.slots(key_states.shape[-2], key_states.device)
        self.keys.index_copy_(2, slots, key_states)
        self.values.index_copy_(2, slots, value_states)
        return self.visible()

    def get_seq_length(self):
        return self.owner.start

    def crop(self, tokens_to_remove: int) -> None:  # pragma: no cover - the engine never crops
        raise RuntimeError("a static fastdecode cache is never cropped: the next step overwrites rejected slots")
