"""TokenStream: the emitted-token buffer every loop shares, with HF's budget and EOS rules."""
from __future__ import annotations

import torch

from fastdecode.decoding.stream import TokenStream

PROMPT = torch.tensor([[1, 2, 3]])


def test_token_stream_counts():
    s = TokenStream(PROMPT, max_new_tokens=5, eos_ids=set())
    assert (s.prompt_len, s.length, s.new_tokens, s.remaining, s.done) == (3, 3, 0, 5, False)
    assert s.append([4, 5]) == 2
    assert (s.length, s.new_tokens, s.remaining, s.done) == (5, 2, 3, False)
    out = s.as_tensor("cpu")
    assert out.dtype == torch.long and out.tolist() == [[1, 2, 3, 4, 5]]


def test_token_stream_cuts_at_the_budget():
    s = TokenStream(PROMPT, max_new_tokens=3, eos_ids=set())
    assert s.append([7, 7, 7, 7, 7]) == 3 and s.done and s.remaining == 0
    assert s.append([8]) == 0 and s.tokens == [1, 2, 3, 7, 7, 7]


def test_token_stream_stops_right_after_eos():
    s = TokenStream(PROMPT, max_new_tokens=10, eos_ids={0, 5})
    assert s.append([4, 5, 6]) == 2 and s.done           # EOS kept, what follows it dropped
    assert s.tokens[-1] == 5 and s.append([6]) == 0


def test_token_stream_eos_in_the_prompt_does_not_stop():
    s = TokenStream(torch.tensor([[5, 1]]), max_new_tokens=2, eos_ids={5})
    assert not s.done and s.append([1]) == 1 and not s.done


def test_token_stream_zero_budget_is_done_at_once():
    s = TokenStream(PROMPT, max_new_tokens=0, eos_ids=set())
    assert s.done and s.append([4]) == 0 and s.as_tensor("cpu").tolist() == PROMPT.tolist()
