"""Clear up-front errors instead of raw IndexError / RuntimeError from transformers or torch, and eval
semantics for models left in training mode."""
import pytest
import torch

import fastdecode
from fastdecode import LambdaAttention
from tiny_models import hf_greedy, tiny_lm


@pytest.mark.parametrize("method", ["autoregressive", "speculative", "multi_draft"])
@pytest.mark.parametrize("bad,match", [(512, "token id 512.*'llama'.*512 input embeddings"), (-1, "negative")])
def test_token_ids_outside_the_vocabulary(method, bad, match):
    m = tiny_lm("llama", 1)
    with pytest.raises(ValueError, match=match):
        fastdecode.generate(m, torch.tensor([[1, bad, 3]]), draft=None if method == "autoregressive" else m,
                            method=method, max_new_tokens=3, temperature=0)


@pytest.mark.parametrize("model_type,field", [("gpt2", "n_positions"), ("opt", "max_position_embeddings")])
def test_absolute_positions_limit(model_type, field):
    m = tiny_lm(model_type, 1, max_position_embeddings=32)  # GPT-2 maps it to n_positions
    assert getattr(m.config, field) == 32
    prompt = torch.randint(0, 512, (1, 20), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=f"'{model_type}'.*32 positions.*config.{field}.*lower max_new_tokens to 13"):
        fastdecode.generate(m, prompt, max_new_tokens=14, temperature=0)
    with pytest.raises(ValueError, match="draft"):
        fastdecode.generate(tiny_lm("llama", 1), prompt, draft=m, max_new_tokens=14, temperature=0)
    out = fastdecode.generate(m, prompt, draft=m, max_new_tokens=13, temperature=0)  # positions 0..31: fits
    assert torch.equal(out.sequences, hf_greedy(m, prompt, 13))


def test_training_mode_warns_runs_in_eval_and_is_restored():
    m = tiny_lm("llama", 2, attention_dropout=0.5)
    prompt = torch.tensor([[1, 2, 3]])
    ref = hf_greedy(m, prompt, 8)
    m.train()
    m.model.layers[0].eval()  # a mixed state must come back as it was
    for method in ("autoregressive", "speculative"):
        with pytest.warns(UserWarning, match="training mode"):
            out = fastdecode.generate(m, prompt, draft=m, method=method, max_new_tokens=8, temperature=0)
        assert torch.equal(out.sequences, ref)
        assert m.training and m.model.layers[1].training and not m.model.layers[0].training


@pytest.mark.parametrize("model_type,match", [
    ("gemma3_text", "'gemma3_text' has one rotary embedding per layer type"),
    ("gptj", "'gptj' applies rotary embeddings in the interleaved GPT-J convention"),
    ("gpt2", "'gpt2' has absolute position embeddings"),
])
def test_lambda_refusals_name_the_real_reason(model_type, match):
    m = tiny_lm(model_type, 2)
    with pytest.raises(ValueError, match=match):
        fastdecode.generate(m, torch.tensor([[1, 2, 3]]), max_new_tokens=2, temperature=0,
                            lambda_attention=LambdaAttention(window=16, num_global=2))


def test_lambda_with_the_model_s_own_sliding_window():
    """The smaller window wins: Lambda's window inside the model's runs; a model window below Lambda's is refused."""
    prompt = torch.tensor([[1, 2, 3]])
    small = tiny_lm("mistral", 2, sliding_window=8)
    with pytest.raises(ValueError, match="own sliding window of 8 tokens.*LambdaAttention.window=16"):
        fastdecode.generate(small, prompt, max_new_tokens=2, temperature=0,
                            lambda_attention=LambdaAttention(window=16, num_global=2))
    large = tiny_lm("mistral", 2, sliding_window=64)
    out = fastdecode.generate(large, prompt, max_new_tokens=6, temperature=0,
                              lambda_attention=LambdaAttention(window=16, num_global=2))
    assert torch.equal(out.sequences, hf_greedy(large, prompt, 6))  # 9 tokens: inside both windows


def test_not_a_model_is_a_type_error_that_names_the_role():
    m = tiny_lm("llama", 1)
    for kw, role in ((dict(target="x"), "target"), (dict(draft="x"), "draft"), (dict(target=object()), "target")):
        args = dict(target=m, input_ids=torch.tensor([[1, 2, 3]]), max_new_tokens=2, temperature=0) | kw
        with pytest.raises(TypeError, match=f"{role} must be a transformers causal language model"):
            fastdecode.generate(**args)


@pytest.mark.parametrize("seed", [2 ** 64, -(2 ** 63) - 1, 2 ** 70])
def test_seed_outside_64_bits(seed):
    with pytest.raises(ValueError, match="seed must fit in 64 bits"):
        fastdecode.generate(tiny_lm("llama", 1), torch.tensor([[1, 2, 3]]), max_new_tokens=2, seed=seed)


@pytest.mark.parametrize("method", ["autoregressive", "speculative", "prompt_lookup"])
@pytest.mark.parametrize("batch", [1, 2])
def test_alibi_model_on_the_static_engine_is_refused(method, batch):
    """Bloom's ALiBi attention takes only a 2D mask; the static engine's forwards pass a 4D one: a clear error
    naming the model type (the dynamic engine runs it)."""
    m = tiny_lm("bloom", 1)
    ids, mask = torch.tensor([[1, 2, 3, 4]] * batch), torch.ones(batch, 4, dtype=torch.long)
    kw = dict(attention_mask=mask, pad_token_id=0, method=method, max_new_tokens=3, temperature=0,
              draft=m if method == "speculative" else None)
    with pytest.raises(ValueError, match="static engine passes a 4D attention mask.*'bloom'.*dynamic"):
        fastdecode.generate(m, ids, cache_implementation="static", **kw)
    assert fastdecode.generate(m, ids, **kw).sequences.shape == (batch, 7)
