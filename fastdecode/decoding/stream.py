"""Pieces every decoding loop shares: the emitted-token buffer with EOS / budget handling."""
from __future__ import annotations

import torch


class TokenStream:
    """The growing token sequence of one generation (batch 1), with stop conditions.

    ``tokens`` holds prompt + generated ids as a Python list (cheap appends); ``append`` applies the
    budget and the EOS rule exactly as HF does: generation stops right after the first EOS token.
    ``streamer`` (transformers' streamer interface: ``put`` / ``end``, e.g. ``TextStreamer``) receives the
    kept tokens of every ``append`` as they are committed (a [1, n] tensor on the CPU).
    """

    def __init__(self, prompt: torch.Tensor, max_new_tokens: int, eos_ids: set[int], streamer=None):
        self.prompt_len = prompt.shape[-1]
        self.tokens: list[int] = prompt[0].tolist()
        self.max_new_tokens = max_new_tokens
        self.eos_ids = eos_ids
        self.done = max_new_tokens == 0
        self.streamer = streamer

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def new_tokens(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def remaining(self) -> int:
        return self.max_new_tokens - self.new_tokens

    def append(self, new: list[int]) -> int:
        """Append emitted tokens, cut at EOS or at the budget. Returns how many were kept."""
        kept = 0
        for t in new:
            if self.done:
                break
            self.tokens.append(int(t))
            kept += 1
            if int(t) in self.eos_ids or self.new_tokens >= self.max_new_tokens:
                self.done = True
        if kept and self.streamer is not None:
            self.streamer.put(torch.tensor([self.tokens[-kept:]]))
        return kept

    def as_tensor(self, device) -> torch.Tensor:
        return torch.tensor([self.tokens], dtype=torch.long, device=device)
