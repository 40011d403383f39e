"""Pieces every decoding loop shares: the emitted-token buffer with EOS / budget handling."""
from __future__ import annotations

import math
import time

import torch

from ..defaults import custom_replaces


class TokenStream:
    """The growing token sequence of one generation (batch 1), with stop conditions.

    ``tokens`` holds prompt + generated ids as a Python list (cheap appends); ``append`` applies the
    budget and the EOS rule exactly as HF does: generation stops right after the first EOS token.
    ``streamer`` (transformers' streamer interface: ``put`` / ``end``, e.g. ``TextStreamer``) receives the
    kept tokens of every ``append`` as they are committed (a [1, n] tensor on the CPU).
    ``processors`` (:class:`~fastdecode.decoding.processors.Processors`, active ones only): the prefix-dependent
    logits processors of the generation; :meth:`process` applies them to rows of logits, and the stream keeps
    their view of the committed text. ``stop`` (:class:`Stops`, or any callable of the token list): generation
    also stops right after a token for which it is true, as after EOS.
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


class Stops:
    """Every stop rule besides EOS and the budget, checked after each committed token, as HF checks its stopping
    criteria after each generated one: HF's stop strings (:class:`StopStrings`), the caller's
    ``stopping_criteria`` (callables ``(input_ids, scores) -> BoolTensor [rows]`` such as transformers'
    ``StoppingCriteria``; called with the row's text as ``input_ids`` [1, length] on ``device`` and ``scores``
    None, as HF passes them unless it returns scores) and ``max_time`` (seconds from this object's creation,
    HF's ``MaxTimeCriteria``)."""

    def __init__(self, strings: StopStrings | None = None, criteria=(), max_time: float | None = None,
                 device="cpu"):
        self.strings = strings
        self.criteria = list(criteria)
        self.device = device
        self.deadline = None if max_time is None else time.time() + max_time

    def __call__(self, tokens: list[int]) -> bool:
        if self.deadline is not None and time.time() > self.deadline:
            return True
        if self.strings is not None and self.strings(tokens):
            return True
        if self.criteria:
            ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
            return any(_says_stop(c, c(ids, None)) for c in self.criteria)
        return False

    @property
    def active(self) -> bool:
        return self.strings is not None or bool(self.criteria) or self.deadline is not None


def _says_stop(criterion, answer) -> bool:
    """A criterion's answer for one row: a bool tensor of one element (HF's [rows]) or a Python bool."""
    if isinstance(answer, torch.Tensor) and answer.numel() == 1 and answer.dtype in (torch.bool, torch.uint8):
        return bool(answer.reshape(()))
    if isinstance(answer, bool):
        return answer
    shown = f"a tensor of shape {tuple(answer.shape)} and dtype {answer.dtype}" if isinstance(answer, torch.Tensor) \
        else repr(answer)
    raise TypeError(f"stopping criterion {type(criterion).__name__} returned {shown} for one row; a stopping "
                    "criterion must return a bool tensor with one value per row of input_ids (or a bool)")


def check_stopping_criteria(criteria) -> list:
    """The caller's ``stopping_criteria`` (HF's ``StoppingCriteriaList``, a list of callables, or one callable)
    as a list; anything else is a ValueError."""
    if criteria is None:
        return []
    items = list(criteria) if isinstance(criteria, (list, tuple)) else [criteria]
    bad = [c for c in items if not callable(c)]
    if bad:
        raise ValueError(f"stopping_criteria must be callables (input_ids, scores) -> bool tensor, such as "
                         f"transformers' StoppingCriteria, in a list or StoppingCriteriaList; got {bad[0]!r}")
    return items


def check_max_time(max_time) -> float | None:
    """HF's ``max_time`` (seconds, >= 0) or None."""
    if max_time is None:
        return None
    if isinstance(max_time, bool) or not isinstance(max_time, (int, float)) or math.isnan(max_time) or max_time < 0:
        raise ValueError(f"max_time must be a number of seconds >= 0, got {max_time!r}")
    return float(max_time)


def _stop_strings(target, strings, tokenizer):
    """HF's stop_strings (the argument, else the generation config's) as a StopStrings test, or None. As in HF,
    they need the model's tokenizer."""
    if strings is None:
        strings = getattr(getattr(target, "generation_config", None), "stop_strings", None)
    if strings is None or (not isinstance(strings, str) and len(strings) == 0):
        return None
    strings = [strings] if isinstance(strings, str) else list(strings)
    if not all(isinstance(x, str) and x for x in strings):
        raise ValueError(f"stop_strings must be a non-empty string or a list of them, got {strings!r}")
    if tokenizer is None:
        raise ValueError("stop_strings need the model's tokenizer: pass it as tokenizer= (as HF generate requires)")
    return StopStrings(tokenizer, strings)


def stops_for(target, strings, tokenizer, criteria: list, max_time, device) -> Stops | None:
    """Every stop rule of the call besides EOS and the budget (:class:`Stops`), or None when there is none;
    ``criteria``: the caller's, as :func:`check_stopping_criteria` returns them.
    stop_strings and max_time: the argument, else the generation config's, as in HF; and as in HF, a criterion
    of the caller's of the type HF would build for one of them (``StopStringCriteria``, ``MaxTimeCriteria``)
    takes its place, with a warning."""
    from transformers.generation.stopping_criteria import MaxTimeCriteria, StopStringCriteria

    if max_time is None:
        max_time = getattr(getattr(target, "generation_config", None), "max_time", None)
    strings = _stop_strings(target, strings, tokenizer)
    max_time = check_max_time(max_time)
    if strings is not None and custom_replaces(criteria, StopStringCriteria, "stop_strings"):
        strings = None
    if max_time is not None and custom_replaces(criteria, MaxTimeCriteria, "max_time"):
        max_time = None
    stops = Stops(strings, criteria, max_time, device)
    return stops if stops.active else None


def eos_of_criteria(criteria: list, eos_ids: set[int]) -> set[int]:
    """The ids generation stops after: ``eos_ids``, unless the caller's ``criteria`` hold HF's ``EosTokenCriteria``,
    which, as in HF generate, takes the place of the one HF builds from the EOS ids (those still hold EOS back
    for the minimum length): then the first such criterion's ids."""
    from transformers.generation.stopping_criteria import EosTokenCriteria

    if not eos_ids or not custom_replaces(criteria, EosTokenCriteria, "eos_token_id"):
        return eos_ids
    first = next(c for c in criteria if type(c) is EosTokenCriteria)
    return {int(e) for e in torch.as_tensor(first.eos_token_id).flatten().tolist()}


def budget_of_criteria(criteria: list, width: int, max_new_tokens: int) -> int:
    """The new-token budget when the caller's ``criteria`` hold HF's ``MaxLengthCriteria``: as in HF generate, it
    takes the place of the one HF builds from max_new_tokens / max_length, so the shortest of them bounds the
    text (prompt width included; at least one token, as HF checks after each); else ``max_new_tokens``."""
    from transformers.generation.stopping_criteria import MaxLengthCriteria

    if not custom_replaces(criteria, MaxLengthCriteria, "max_new_tokens / max_length"):
        return max_new_tokens
    return max(1, min(c.max_length for c in criteria if type(c) is MaxLengthCriteria) - width)
