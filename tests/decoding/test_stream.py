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
