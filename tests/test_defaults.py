"""generate()'s sampling / length defaults and EOS come from the target's generation_config as in HF
``generate``; explicit arguments win; fastdecode's documented defaults apply where it says nothing."""
import warnings

import pytest
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


def test_do_sample_as_hf_generate():
    """HF's do_sample: False is greedy (HF's own greedy output), True samples with the temperature given or the
    generation config's, and HF's fallback top_k = 50 (the same tokens as that temperature, top_k 50 and seed); a
    contradicting temperature raises."""
    import pytest

    m = _model(do_sample=False, temperature=0.7)    # a config that decodes greedily unless told otherwise
    greedy = m.generate(PROMPT, max_new_tokens=10, do_sample=False)
    assert torch.equal(fastdecode.generate(m, PROMPT, do_sample=False, max_new_tokens=10).sequences, greedy)
    assert resolve(m, 3, None, None, None, None, do_sample=True)[1] == 0.7   # the config's temperature
    assert resolve(_model(), 3, None, None, None, None, do_sample=True)[1] == 1.0
    assert resolve(m, 3, None, 0.5, None, None, do_sample=True)[1] == 0.5
    for draft, method in ((None, "autoregressive"), (m, "speculative")):
        a = fastdecode.generate(m, PROMPT, draft=draft, method=method, do_sample=True, seed=3, max_new_tokens=10)
        b = fastdecode.generate(m, PROMPT, draft=draft, method=method, temperature=0.7, top_k=50, seed=3,
                                max_new_tokens=10)
        assert torch.equal(a.sequences, b.sequences)
    with pytest.raises(ValueError, match="do_sample=False is greedy decoding, but temperature=0.7"):
        fastdecode.generate(m, PROMPT, do_sample=False, temperature=0.7)
    with pytest.raises(ValueError, match="do_sample=True asks for sampling, but temperature=0"):
        fastdecode.generate(m, PROMPT, do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="do_sample must be True, False or None"):
        fastdecode.generate(m, PROMPT, do_sample=1)


@pytest.mark.parametrize("how", ["call", "generation_config", "model_config"])
def test_do_sample_true_samples_hf_s_law(how):
    """Sampling asked for with HF's switch and no top_k anywhere: HF falls back to top_k = 50, and so does
    fastdecode (the first step's scores, -inf pattern included, equal HF's); asked for with a temperature alone,
    fastdecode samples the whole distribution (its documented default), and an explicit top_k wins."""
    from transformers import GenerationConfig

    m = _model(do_sample=True) if how == "model_config" else _model()
    kw = dict(do_sample=True) if how == "call" else (
        dict(generation_config=GenerationConfig(do_sample=True)) if how == "generation_config" else {})
    common = dict(max_new_tokens=2, output_scores=True, return_dict_in_generate=True, temperature=0.8)
    ref = m.generate(PROMPT, **common, **kw).scores[0]
    assert int(torch.isfinite(ref).sum()) == 50 < m.config.vocab_size
    out = fastdecode.generate(m, PROMPT, seed=0, **common, **kw).scores[0]
    assert torch.equal(torch.isfinite(out), torch.isfinite(ref))
    assert torch.allclose(out[torch.isfinite(out)], ref[torch.isfinite(ref)], atol=1e-5)
    assert resolve(m, 3, None, 0.8, 7, None, do_sample=True)[2] == 7   # an explicit top_k wins
    assert resolve(_model(), 3, None, 0.8, None, None)[2] == 0          # no switch: the whole distribution


def test_hf_only_options_say_what_to_do():
    import pytest

    m = _model()
    for name, value, hint in (("num_beams", 4, "beam search"),
                              ("watermarking_config", {"bias": 2.0}, "changes the distribution"),
                              ("guidance_scale", 1.5, "changes the distribution"),
                              ("low_memory", True, "beam search"), ("length_penalty", 0.8, "beam search"),
                              ("output_hidden_states", True, "not hidden states"),
                              ("remove_invalid_values", True, "never replaced"),
                              ("encoder_repetition_penalty", 1.2, "encoder-decoder"),
                              ("past_key_values", object(), "builds its own caches"),
                              ("pixel_values", torch.zeros(1, 3, 28, 28), "images, video and audio are not passed"),
                              ("input_features", torch.zeros(1, 80, 30), "images, video and audio are not passed")):
        for draft in (None, m):
            with pytest.raises(ValueError, match=f"{name}= is an option of transformers' generate.*{hint}"):
                fastdecode.generate(m, PROMPT, draft=draft, max_new_tokens=2, **{name: value})
    embeds = m.get_input_embeddings()(PROMPT)
    for ids in (None, PROMPT):   # HF's inputs_embeds, with or without input_ids: a ValueError that says why
        with pytest.raises(ValueError, match="inputs_embeds= is an option of transformers' generate.*token ids"):
            fastdecode.generate(m, ids, inputs_embeds=embeds, max_new_tokens=2)
    with pytest.raises(ValueError, match="input_ids is required"):
        fastdecode.generate(m, max_new_tokens=2)


def test_hf_options_that_ask_for_nothing_pass():
    """Code written for HF generate may pass an option at the value that changes nothing (or None)."""
    m = _model()
    ref = fastdecode.generate(m, PROMPT, temperature=0, max_new_tokens=3).sequences
    out = fastdecode.generate(m, PROMPT, temperature=0, max_new_tokens=3, num_beams=1, use_cache=True,
                              no_repeat_ngram_size=0, typical_p=1.0, guidance_scale=1.0, return_dict_in_generate=True, output_scores=False,
                              logits_processor=[], stopping_criteria=None, max_time=None, length_penalty=1.0,
                              early_stopping=False, num_beam_groups=1, diversity_penalty=0.0, low_memory=None,
                              output_attentions=False, output_hidden_states=False, remove_invalid_values=False,
                              synced_gpus=False, past_key_values=None, token_healing=False, constraints=None,
                              negative_prompt_ids=None, encoder_no_repeat_ngram_size=0)
    assert torch.equal(out.sequences, ref)
    with pytest.raises(ValueError, match="use_cache= is an option"):
        fastdecode.generate(m, PROMPT, max_new_tokens=3, use_cache=False)
    with pytest.raises(ValueError, match="num_beams= is an option"):
        fastdecode.generate(m, PROMPT, max_new_tokens=3, num_beams=True)   # a bool is not the count 1


def test_generation_config_settings_not_applied_are_warned_about():
    """HF generate applies a generation config's guidance_scale, beam search, ...; fastdecode does not, and says so
    (one warning naming them); at the values that change nothing, nothing is said."""
    m = _model()
    m.generation_config.guidance_scale = 1.5
    m.generation_config.num_beams = 3
    try:
        with pytest.warns(UserWarning, match=r"sets guidance_scale=1.5, num_beams=3, which HF generate"):
            fastdecode.generate(m, PROMPT, temperature=0, max_new_tokens=2)
        m.generation_config.guidance_scale = 1.0
        m.generation_config.num_beams = 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            fastdecode.generate(m, PROMPT, temperature=0, max_new_tokens=2)
    finally:
        m.generation_config.guidance_scale = None
        m.generation_config.num_beams = None


@pytest.mark.parametrize("warper", ["typical_p", "epsilon_cutoff", "eta_cutoff", "top_h"])
def test_other_warpers_as_hf(warper):
    """typical_p, epsilon_cutoff and eta_cutoff after temperature, top-k, top-p and min_p, top_h before top-k: the
    same kept tokens and probabilities as HF's warper chain; from the argument or the generation config."""
    from transformers.generation.logits_process import (EpsilonLogitsWarper, EtaLogitsWarper, MinPLogitsWarper,
                                                        TopHLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
                                                        TypicalLogitsWarper)

    hf = dict(typical_p=lambda v: TypicalLogitsWarper(v), epsilon_cutoff=lambda v: EpsilonLogitsWarper(v),
              eta_cutoff=lambda v: EtaLogitsWarper(v), top_h=lambda v: TopHLogitsWarper(v))[warper]
    g = torch.Generator().manual_seed(0)
    for trial in range(40):
        logits = torch.randn(3, 60, generator=g) * (1 + trial % 4)
        value = [0.2, 0.5, 0.9, 0.05][trial % 4] if warper in ("typical_p", "top_h") else \
            [1e-3, 0.02, 0.1, 3e-4][trial % 4]
        top_k, top_p, min_p = [(0, 1.0, 0.0), (20, 1.0, 0.0), (0, 0.9, 0.0), (0, 1.0, 0.05)][trial % 4]
        x = logits / 0.7
        if warper == "top_h":   # (before top-k in HF's chain)
            x = hf(value)(None, x)
        if top_k:
            x = TopKLogitsWarper(top_k)(None, x)
        if top_p < 1:
            x = TopPLogitsWarper(top_p)(None, x)
        if min_p:
            x = MinPLogitsWarper(min_p)(None, x)
        if warper != "top_h":
            x = hf(value)(None, x)
        want = torch.softmax(x, -1)
        got = fastdecode.kernels.probs(logits, 0.7, top_k, top_p, min_p=min_p, **{warper: value})
        assert torch.equal(got > 0, want > 0), trial
        assert torch.allclose(got, want, atol=1e-6), trial
    m = _model()
    v = 0.5 if warper in ("typical_p", "top_h") else 0.05
    a = fastdecode.generate(m, PROMPT, temperature=1.0, max_new_tokens=4, seed=1, **{warper: v}).sequences
    setattr(m.generation_config, warper, v)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")   # applied: no warning
            assert torch.equal(fastdecode.generate(m, PROMPT, temperature=1.0, max_new_tokens=4, seed=1).sequences, a)
    finally:
        setattr(m.generation_config, warper, None)
    with pytest.raises(ValueError, match=f"{warper} must be in"):
        fastdecode.generate(m, PROMPT, **{warper: 1.5})


def test_min_p_as_hf():
    """min_p drops tokens under min_p times the top probability, after top-k / top-p; the argument, else the
    generation config's. Same probabilities as HF's warper chain."""
    from transformers.generation.logits_process import MinPLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 50, generator=g) * 3
    for top_p, min_p in ((1.0, 0.1), (0.9, 0.3), (1.0, 1.0)):
        x = logits.clone() / 0.8
        if top_p < 1:
            x = TopPLogitsWarper(top_p)(None, x)
        want = torch.softmax(MinPLogitsWarper(min_p)(None, x), -1)
        got = fastdecode.kernels.probs(logits, 0.8, 0, top_p, min_p=min_p)
        assert torch.equal(got > 0, want > 0) and torch.allclose(got, want, atol=1e-6)
    m = _model()
    a = fastdecode.generate(m, PROMPT, temperature=1.0, min_p=0.3, max_new_tokens=4, seed=1).sequences
    m.generation_config.min_p = 0.3
    try:
        assert torch.equal(fastdecode.generate(m, PROMPT, temperature=1.0, max_new_tokens=4, seed=1).sequences, a)
    finally:
        m.generation_config.min_p = None
    with pytest.raises(ValueError, match="min_p must be in"):
        fastdecode.generate(m, PROMPT, min_p=-0.1)


def test_max_length_and_num_return_sequences_as_hf_generate():
    """max_length counts the prompt; num_return_sequences gives each prompt's n rows next to each other, the
    same tokens as the batch written out by hand with the same seed (one batched call)."""
    import pytest

    m = _model()
    ref = m.generate(PROMPT, max_new_tokens=5, do_sample=False)
    assert torch.equal(fastdecode.generate(m, PROMPT, max_length=8, temperature=0).sequences, ref)
    with pytest.warns(UserWarning, match="max_new_tokens takes precedence, as in HF"):
        out = fastdecode.generate(m, PROMPT, max_length=20, max_new_tokens=5, temperature=0)
    assert torch.equal(out.sequences, ref)
    with pytest.raises(ValueError, match="prompt has 3 tokens, but max_length=3"):
        fastdecode.generate(m, PROMPT, max_length=3)
    ids = torch.tensor([[0, 0, 5, 6], [1, 2, 3, 4]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    for draft, method in ((None, "autoregressive"), (m, "speculative")):
        kw = dict(draft=draft, method=method, max_new_tokens=6, temperature=1.0, seed=5, pad_token_id=0, eos_token_id=[])
        out = fastdecode.generate(m, ids, attention_mask=mask, num_return_sequences=3, **kw)
        by_hand = fastdecode.generate(m, ids.repeat_interleave(3, 0), attention_mask=mask.repeat_interleave(3, 0), **kw)
        assert out.sequences.shape == (6, 10) and torch.equal(out.sequences, by_hand.sequences)
        assert torch.equal(out.sequences[:3, :4], ids[:1].expand(3, 4)) and torch.equal(out.sequences[3:, :4], ids[1:].expand(3, 4))
        assert len({tuple(r) for r in out.sequences[:3, 4:].tolist()}) > 1   # three samples, not one copied
    with pytest.raises(ValueError, match="num_return_sequences=2 with greedy decoding"):
        fastdecode.generate(m, PROMPT, num_return_sequences=2, temperature=0, pad_token_id=0)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="num_return_sequences must be an int >= 1"):
            fastdecode.generate(m, PROMPT, num_return_sequences=bad)


def test_hf_names_for_what_fastdecode_does():
    """assistant_model is the draft (both at once is an error); prompt_lookup_num_tokens selects prompt lookup
    under method="auto", as in HF; a tokenizer's all-zero token_type_ids pass for a model that does not read
    them."""
    import pytest


    m, d = _model(), tiny_lm("llama", 1, seed=4)
    ref = fastdecode.generate(m, PROMPT, draft=d, temperature=0, max_new_tokens=6, fallback="off")
    out = fastdecode.generate(m, PROMPT, assistant_model=d, temperature=0, max_new_tokens=6, fallback="off")
    assert torch.equal(out.sequences, ref.sequences) and out.stats.method == "speculative" and out.stats.draft_calls
    with pytest.raises(ValueError, match="draft= and assistant_model= both given"):
        fastdecode.generate(m, PROMPT, draft=d, assistant_model=d, max_new_tokens=2)
    out = fastdecode.generate(m, PROMPT, temperature=0, max_new_tokens=6, prompt_lookup_num_tokens=3)
    assert out.stats.method == "prompt_lookup" and torch.equal(out.sequences, fastdecode.generate(
        m, PROMPT, temperature=0, max_new_tokens=6).sequences)
    enc = {"input_ids": PROMPT, "attention_mask": torch.ones_like(PROMPT), "token_type_ids": torch.zeros_like(PROMPT)}
    assert torch.equal(fastdecode.generate(m, **enc, temperature=0, max_new_tokens=6).sequences,
                       fastdecode.generate(m, enc, temperature=0, max_new_tokens=6).sequences)
    with pytest.raises(ValueError, match="token_type_ids: .* they are not all zeros; tokenize with "
                                         "return_token_type_ids=False"):
        fastdecode.generate(m, PROMPT, token_type_ids=torch.ones_like(PROMPT), max_new_tokens=2)
    with pytest.raises(ValueError, match="token_type_ids given twice"):
        fastdecode.generate(m, enc, token_type_ids=torch.zeros_like(PROMPT), max_new_tokens=2)
    gpt2 = tiny_lm("gpt2", layers=1)
    with pytest.raises(ValueError, match="GPT2LMHeadModel reads them"):
        fastdecode.generate(gpt2, PROMPT, token_type_ids=torch.zeros_like(PROMPT), max_new_tokens=2)


def test_generation_config_argument_as_hf():
    """generate(generation_config=gc): gc's set fields over the target's config for the call (HF's merge), the
    arguments over both; the target's own config is left as it was, also after an error."""
    import pytest
    from transformers import GenerationConfig

    m = _model(max_new_tokens=3)
    own = m.generation_config
    gc = GenerationConfig(max_new_tokens=7, do_sample=False, repetition_penalty=1.5, no_repeat_ngram_size=2)
    out = fastdecode.generate(m, PROMPT, generation_config=gc)
    assert torch.equal(out.sequences, m.generate(PROMPT, generation_config=gc))
    assert out.sequences.shape == (1, 10) and m.generation_config is own and own.max_new_tokens == 3
    assert fastdecode.generate(m, PROMPT, generation_config=gc, max_new_tokens=2).sequences.shape == (1, 5)
    assert fastdecode.generate(m, PROMPT, generation_config=GenerationConfig(), temperature=0).sequences.shape == (1, 6)
    with pytest.raises(ValueError, match="generation_config must be a transformers GenerationConfig, got dict"):
        fastdecode.generate(m, PROMPT, generation_config={"max_new_tokens": 2})
    with pytest.raises(ValueError, match="top_p must be"):
        fastdecode.generate(m, PROMPT, generation_config=GenerationConfig(do_sample=True, top_p=0.0))
    assert m.generation_config is own
