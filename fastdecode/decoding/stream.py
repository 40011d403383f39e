"""Pieces every decoding loop shares: the emitted-token buffer with EOS / budget handling."""
from __future__ import annotations

import torch


class TokenStream:
    """The growing token sequence of one generation (batch 1), with stop conditions.

    ``tokens`` holds prompt + generated ids as a Python list (cheap appends); ``append`` applies the
    budget and the EOS rule exactly as HF does: generation stops right after the first EOS token.
    ``streamer`` (transformers' streamer interface: ``put`` / ``end``, e.g. ``TextStreamer``) receives the
    kept tokens of every ``append`` as they are committed (a [1, n] tensor on the CPU).
    ``processors`` (:class:`~fastdecode.decoding.processors.Processors`, active ones only): the prefix-dependent
    logits processors of the generation; :meth:`process` applies them to rows of logits, and the stream keeps
    their view of the committed text. ``stop`` (:class:`StopStrings`): generation also stops right after a token
    that completes one of its strings, as after EOS.
    """

    def __init__(self, prompt: torch.Tensor, max_new_tokens: int, eos_ids: set[int], streamer=None,
                 processors=None, stop=None, row: int = 0):
        self.prompt_len = prompt.shape[-1]
        self.tokens: list[int] = prompt[0].tolist()
        self.max_new_tokens = max_new_tokens
        self.eos_ids = eos_ids
        self.done = max_new_tokens == 0
        self.streamer = streamer
        self.stop = stop
        self.prefix = None
        if processors is not None and processors.active:
            from .processors import Prefix
            self.prefix = Prefix(processors, self.tokens, self.prompt_len, prompt.device, row)

    def process(self, logits: torch.Tensor, ahead=None) -> torch.Tensor:
        """``logits`` [n, V] after the processors (see :meth:`Prefix.apply
        <fastdecode.decoding.processors.Prefix.apply>` for ``ahead``); unchanged when there are none."""
        return logits if self.prefix is None else self.prefix.apply(logits, ahead)

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
            if int(t) in self.eos_ids or self.new_tokens >= self.max_new_tokens or (
                    self.stop is not None and self.stop(self.tokens)):
                self.done = True
        if kept and self.prefix is not None:
            self.prefix.commit(self.tokens[-kept:])
        if kept and self.streamer is not None:
            self.streamer.put(torch.tensor([self.tokens[-kept:]]))
        return kept

    def as_tensor(self, device) -> torch.Tensor:
        return torch.tensor([self.tokens], dtype=torch.long, device=device)


class StopStrings:
    """HF's ``stop_strings``: true right after a token that completes one of the strings (the string must reach
    into that token; it may start in earlier tokens, the prompt included). transformers' own
    ``StopStringCriteria`` decides, on the last tokens of the text, so the stops are exactly HF's."""

    def __init__(self, tokenizer, strings):
        from transformers.generation.stopping_criteria import StopStringCriteria

        self.criteria = StopStringCriteria(tokenizer=tokenizer, stop_strings=strings)
        self.window = self.criteria.maximum_token_len   # (a stop string spans at most one token per character)

    def __call__(self, tokens: list[int]) -> bool:
        return bool(self.criteria(torch.tensor([tokens[-self.window:]]), None)[0])
