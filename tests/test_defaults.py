"""generate()'s sampling / length defaults and EOS come from the target's generation_config as in HF
``generate``; explicit arguments win; fastdecode's documented defaults apply where it says nothing."""
import torch

import fastdecode
from fastdecode.defaults import resolve
from tiny_models import tiny_lm

PROMPT = torch.tensor([[1, 2, 3]])


def _model(**gc):
    m = tiny_lm("llama", 1, seed=3)
    for k, v in gc.items():
        setattr(m.generation_config, k, v)
    return m


def test_documented_defaults_when_generation_config_says_nothing():
    assert resolve(_model(), 3, None, None, None, None) == (128, 1.0, 0, 1.0)


def test_generation_config_fills_what_the_caller_leaves_out():
    m = _model(do_sample=True, temperature=0.7, top_k=20, top_p=0.9, max_new_tokens=9)
    assert resolve(m, 3, None, None, None, None) == (9, 0.7, 20, 0.9)
    assert resolve(m, 3, 4, 0.0, 5, 1.0) == (4, 0.0, 5, 1.0)  # explicit arguments win
    assert resolve(_model(do_sample=False, temperature=0.7), 3, None, None, None, None)[1] == 0.0
    assert resolve(_model(max_length=10), 3, None, None, None, None)[0] == 7  # HF counts the prompt


def test_do_sample_false_and_max_new_tokens_match_hf_generate():
    m = _model(do_sample=False, max_new_tokens=7)
    ref = m.generate(PROMPT)
    assert ref.shape[1] == 3 + 7
    assert torch.equal(fastdecode.generate(m, PROMPT).sequences, ref)
    assert torch.equal(fastdecode.generate(m, PROMPT, draft=m, method="speculative").sequences, ref)
    assert fastdecode.generate(m, PROMPT, max_new_tokens=3).sequences.shape[1] == 6


def test_top_k_from_generation_config_is_used():
    m = _model(do_sample=True, top_k=1, max_new_tokens=8)  # top-1 sampling is the argmax
    greedy = m.generate(PROMPT, do_sample=False)
    assert torch.equal(fastdecode.generate(m, PROMPT, seed=0).sequences, greedy)
    assert not torch.equal(fastdecode.generate(m, PROMPT, seed=0, top_k=0).sequences, greedy)  # explicit wins


def test_eos_as_hf_generation_config_only():
    m = tiny_lm("llama", 1, seed=3)
    free = m.generate(PROMPT, max_new_tokens=12, do_sample=False)
    eos = int(free[0, 5])
    m = tiny_lm("llama", 1, seed=3, eos_token_id=eos)
    assert m.generation_config.eos_token_id == eos and m.config.eos_token_id == eos
    stop = m.generate(PROMPT, max_new_tokens=12, do_sample=False)
    assert stop.shape[1] < free.shape[1]
    assert torch.equal(fastdecode.generate(m, PROMPT, temperature=0, max_new_tokens=12).sequences, stop)
    m.generation_config.eos_token_id = None  # HF then ignores config.eos_token_id
    ref = m.generate(PROMPT, max_new_tokens=12, do_sample=False)
    assert torch.equal(ref, free)
    for method, draft in [("autoregressive", None), ("speculative", m)]:
        out = fastdecode.generate(m, PROMPT, draft=draft, method=method, temperature=0, max_new_tokens=12)
        assert torch.equal(out.sequences, ref)


def test_max_length_without_room_for_the_prompt_is_an_error_as_in_hf():
    import pytest

    m = _model(max_length=3)
    for prompt in (PROMPT, torch.tensor([[1, 2, 3, 4]])):
        with pytest.raises(ValueError, match="Input length"):     # HF's own refusal
            m.generate(prompt, do_sample=False)
        with pytest.raises(ValueError, match=f"prompt has {prompt.shape[1]} tokens.*max_length is 3"):
            fastdecode.generate(m, prompt)
    assert fastdecode.generate(m, PROMPT, max_new_tokens=2, temperature=0).sequences.shape[1] == 5   # explicit wins
