"""TokenStream: the emitted-token buffer every loop shares, with HF's budget, EOS and stop-string rules."""
from __future__ import annotations

import pytest
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


def test_stop_strings_need_a_tokenizer_and_strings():
    import fastdecode
    from tiny_models import tiny_llama

    m, ids = tiny_llama(1), torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match="stop_strings need the model's tokenizer: pass it as tokenizer="):
        fastdecode.generate(m, ids, stop_strings=["\n"])
    with pytest.raises(ValueError, match="stop_strings must be a non-empty string"):
        fastdecode.generate(m, ids, stop_strings=[""], tokenizer=object())
    assert fastdecode.generate(m, ids, stop_strings=[], max_new_tokens=2).sequences.shape == (1, 5)


@pytest.mark.slow
def test_stop_strings_stop_where_hf_generate_does(code_pair, stdlib_prompts):
    """The same stops as HF generate(stop_strings=..., tokenizer=...): strings that reach back into the prompt,
    that end inside a token, several at once; every method on both engines, and a left-padded batch."""
    import fastdecode

    target, draft, tok = code_pair
    stops = ["\n\n", "return", ":"]
    rows = [torch.tensor([p[:20]]) for p in stdlib_prompts[:3]]
    stopped = 0
    for ids in rows[:2]:
        ref = target.generate(ids, max_new_tokens=40, do_sample=False, stop_strings=stops, tokenizer=tok)
        stopped += ref.shape[1] < 60   # (the strings do stop these generations)
        for engine in ("dynamic", "static"):
            for method, extra in (("autoregressive", {}), ("speculative", dict(draft=draft)), ("prompt_lookup", {}),
                                  ("multi_draft", dict(draft=draft, num_drafts=2, draft_length=3))):
                out = fastdecode.generate(target, ids, method=method, temperature=0, max_new_tokens=40,
                                          cache_implementation=engine, stop_strings=stops, tokenizer=tok, **extra)
                assert torch.equal(out.sequences, ref), (engine, method)
    assert stopped
    batch = torch.cat([torch.cat([torch.zeros(1, 20 - k, dtype=torch.long), r[:, :k]], 1)
                       for r, k in zip(rows, (20, 14, 9))])
    mask = (torch.arange(20)[None] >= torch.tensor([[0], [6], [11]])).long()
    ref = target.generate(batch, attention_mask=mask, max_new_tokens=40, do_sample=False, stop_strings=stops,
                          tokenizer=tok, pad_token_id=0)
    for engine in ("dynamic", "static"):
        out = fastdecode.generate(target, batch, attention_mask=mask, draft=draft, temperature=0, max_new_tokens=40,
                                  pad_token_id=0, cache_implementation=engine, stop_strings=stops, tokenizer=tok)
        assert torch.equal(out.sequences, ref), engine


def test_stops_combine_criteria_strings_and_time():
    """Stops: true when any rule is; criteria get the row's text [1, length] and scores None; a bad answer or a
    bad criterion is an error that names it."""
    from fastdecode.decoding.stream import Stops, check_max_time, check_stopping_criteria

    seen = []

    def last_is_7(ids, scores):
        seen.append((ids.tolist(), scores))
        return ids[:, -1] == 7

    s = TokenStream(PROMPT, max_new_tokens=10, eos_ids=set(), stop=Stops(criteria=[last_is_7]))
    assert s.append([4, 7, 9]) == 2 and s.done and s.tokens == [1, 2, 3, 4, 7]
    assert seen == [([[1, 2, 3, 4]], None), ([[1, 2, 3, 4, 7]], None)]
    assert not Stops().active and Stops(max_time=5).active and not Stops(max_time=5)([1])
    assert Stops(max_time=0.0)([1])  # (the deadline has passed by the first check)
    assert Stops(criteria=[lambda ids, _: True])([1]) and not Stops(criteria=[lambda ids, _: False])([1])
    with pytest.raises(TypeError, match="stopping criterion function returned None.*bool tensor"):
        Stops(criteria=[lambda ids, _: None])([1])
    with pytest.raises(TypeError, match=r"a tensor of shape \(1,\) and dtype torch.float32"):
        Stops(criteria=[lambda ids, _: torch.ones(1)])([1])
    with pytest.raises(ValueError, match="stopping_criteria must be callables.*got 3"):
        check_stopping_criteria([last_is_7, 3])
    assert check_stopping_criteria(last_is_7) == [last_is_7] and check_stopping_criteria(None) == []
    for bad in (-1, float("nan"), "5", True):
        with pytest.raises(ValueError, match="max_time must be a number of seconds >= 0"):
            check_max_time(bad)


def test_max_time_stops_after_the_first_token_as_hf():
    """max_time=0: one new token and stop, as HF's MaxTimeCriteria (checked after each token, also inside a
    speculative step's accepted run); the generation config's max_time is read."""
    import fastdecode
    from tiny_models import tiny_llama

    m, d, ids = tiny_llama(1), tiny_llama(2), torch.tensor([[1, 2, 3]])
    assert m.generate(ids, max_new_tokens=8, do_sample=False, max_time=0.0).shape == (1, 4)
    for engine in ("dynamic", "static"):
        for method, extra in (("autoregressive", {}), ("speculative", dict(draft=d)),
                              ("multi_draft", dict(draft=d, num_drafts=2))):
            out = fastdecode.generate(m, ids, method=method, temperature=0, max_new_tokens=8, max_time=0,
                                      cache_implementation=engine, **extra)
            assert out.sequences.shape == (1, 4), (engine, method)
    assert fastdecode.generate(m, ids, max_new_tokens=8, max_time=60).sequences.shape == (1, 11)
    m.generation_config.max_time = 0.0
    try:
        assert fastdecode.generate(m, ids, max_new_tokens=8).sequences.shape == (1, 4)
    finally:
        m.generation_config.max_time = None


@pytest.mark.slow
def test_stopping_criteria_stop_where_hf_generate_does(code_pair, stdlib_prompts):
    """The caller's StoppingCriteriaList gives HF generate's stops: a criterion on the last two tokens (a bigram
    of the plain greedy text, so that it bites) and HF's MaxLengthCriteria; speculative and multi-draft decoding
    on both engines, and a left-padded batch."""
    import fastdecode
    from transformers import MaxLengthCriteria, StoppingCriteria, StoppingCriteriaList

    target, draft, tok = code_pair

    class Bigram(StoppingCriteria):
        def __init__(self, a, b):
            self.a, self.b = a, b

        def __call__(self, input_ids, scores, **kwargs):
            return (input_ids[:, -2] == self.a) & (input_ids[:, -1] == self.b)

    rows = [torch.tensor([p[:20]]) for p in stdlib_prompts[:3]]
    plain = target.generate(rows[0], max_new_tokens=40, do_sample=False)[0, 20:].tolist()
    crit = StoppingCriteriaList([Bigram(*plain[14:16]), MaxLengthCriteria(20 + 30)])
    ref = target.generate(rows[0], max_new_tokens=40, do_sample=False, stopping_criteria=crit)
    assert ref.shape[1] <= 20 + 16
    for engine in ("dynamic", "static"):
        for method, extra in (("speculative", dict(draft=draft)), ("prompt_lookup", {}),
                              ("multi_draft", dict(draft=draft, num_drafts=2, draft_length=3))):
            out = fastdecode.generate(target, rows[0], method=method, temperature=0, max_new_tokens=40,
                                      cache_implementation=engine, stopping_criteria=crit, **extra)
            assert torch.equal(out.sequences, ref), (engine, method)
    batch = torch.cat([torch.cat([torch.zeros(1, 20 - k, dtype=torch.long), r[:, :k]], 1)
                       for r, k in zip(rows, (20, 14, 9))])
    mask = (torch.arange(20)[None] >= torch.tensor([[0], [6], [11]])).long()
    crit = StoppingCriteriaList([Bigram(*plain[14:16])])
    ref = target.generate(batch, attention_mask=mask, max_new_tokens=40, do_sample=False, stopping_criteria=crit,
                          pad_token_id=0)
    for engine in ("dynamic", "static"):
        out = fastdecode.generate(target, batch, attention_mask=mask, draft=draft, temperature=0, max_new_tokens=40,
                                  pad_token_id=0, cache_implementation=engine, stopping_criteria=crit)
        assert torch.equal(out.sequences, ref), engine
