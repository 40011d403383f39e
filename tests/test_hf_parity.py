"""Where HF generate's handling of its arguments is subtle, fastdecode.generate does what it does (cases found by
a randomized comparison with HF): lengths of a left-padded row, the two minimum lengths, the generation
config's num_return_sequences, the mask HF infers from pad tokens, out-of-vocabulary ids, and rows whose every
token the processors mask."""
import pytest
import torch

import fastdecode
from tiny_models import draft_of, tiny_lm

IDS = torch.tensor([[11, 22, 33, 44, 55]])


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama", 2, 0)


def test_max_length_counts_a_padded_rows_width(model):
    """max_length (argument or generation config) counts the padded width of one left-padded row, as HF and as
    for a batch."""
    ids = torch.tensor([[0, 0, 0, 11, 22, 33, 44, 55]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    ref = model.generate(ids, attention_mask=mask, pad_token_id=0, max_length=12, do_sample=False)
    for engine in ("dynamic", "static"):
        out = fastdecode.generate(model, ids, attention_mask=mask, pad_token_id=0, max_length=12, temperature=0,
                                  cache_implementation=engine)
        assert torch.equal(out.sequences, ref), engine
    model.generation_config.max_length = 12
    try:
        out = fastdecode.generate(model, ids, attention_mask=mask, pad_token_id=0, temperature=0)
    finally:
        model.generation_config.max_length = None
    assert torch.equal(out.sequences, ref)


def test_min_new_tokens_takes_precedence_over_min_length(model):
    """Both set: HF applies min_new_tokens alone (min_length = min_new_tokens + the prompt), not the larger."""
    eos = model.generate(IDS, max_new_tokens=20, do_sample=False)[0, 5:].tolist()[2]
    for kw in (dict(min_new_tokens=2, min_length=15), dict(min_new_tokens=0, min_length=15),
               dict(min_length=15)):
        ref = model.generate(IDS, do_sample=False, max_new_tokens=20, eos_token_id=eos, **kw)
        out = fastdecode.generate(model, IDS, temperature=0, max_new_tokens=20, eos_token_id=eos, **kw)
        assert torch.equal(out.sequences, ref), kw
    assert out.sequences.shape[1] > 8   # (min_length alone holds EOS back)


def test_generation_config_num_return_sequences(model):
    model.generation_config.num_return_sequences = 3
    try:
        out = fastdecode.generate(model, IDS, max_new_tokens=4, pad_token_id=0, seed=0)
        with pytest.raises(ValueError, match="num_return_sequences=3 with greedy decoding"):
            fastdecode.generate(model, IDS, max_new_tokens=4, temperature=0)
    finally:
        model.generation_config.num_return_sequences = None
    assert out.sequences.shape == (3, 9)
    with pytest.raises(ValueError, match="num_return_sequences=2 with greedy decoding"):   # (before the pad check)
        fastdecode.generate(model, IDS, max_new_tokens=4, temperature=0, num_return_sequences=2)


def test_mask_inferred_from_leading_pad_tokens(model):
    """No attention_mask: leading pad tokens are padding, as HF infers it (pad id not an EOS id); a pad token
    inside a row's text stays text; with the pad id an EOS id nothing is inferred."""
    ids = torch.tensor([[0, 0, 11, 22, 33], [1, 2, 3, 4, 5]])
    ref = model.generate(ids, pad_token_id=0, max_new_tokens=6, do_sample=False)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert torch.equal(ref, model.generate(ids, attention_mask=mask, pad_token_id=0, max_new_tokens=6,
                                           do_sample=False))
    for engine in ("dynamic", "static"):
        out = fastdecode.generate(model, ids, pad_token_id=0, max_new_tokens=6, temperature=0,
                                  cache_implementation=engine)
        assert torch.equal(out.sequences, ref), engine
    one = fastdecode.generate(model, ids[:1], pad_token_id=0, max_new_tokens=6, temperature=0)
    assert torch.equal(one.sequences, ref[:1])
    inside = torch.tensor([[11, 0, 22, 33]])   # (HF would mask this one too)
    plain = fastdecode.generate(model, inside, max_new_tokens=4, temperature=0).sequences
    assert torch.equal(fastdecode.generate(model, inside, pad_token_id=0, max_new_tokens=4, temperature=0).sequences,
                       plain)
    as_eos = fastdecode.generate(model, ids[:1], pad_token_id=0, eos_token_id=0, max_new_tokens=4, temperature=0)
    assert torch.equal(as_eos.sequences, fastdecode.generate(model, ids[:1], max_new_tokens=4, temperature=0).sequences)


def test_out_of_vocabulary_ids(model):
    """A bad word or biased token the logits lack is a ValueError, as in HF; a suppressed one is ignored, as in
    HF."""
    for kw, name in ((dict(bad_words_ids=[[5000]]), "bad_words_ids"), (dict(bad_words_ids=[[1, 5000]]), "bad_words_ids"),
                     (dict(sequence_bias={(5000,): 1.0}), "sequence_bias"),
                     (dict(forced_eos_token_id=5000), "forced_bos_token_id / forced_eos_token_id")):
        with pytest.raises(ValueError, match=f"{name} names token ids \\[5000\\], but the model's logits have 512"):
            fastdecode.generate(model, IDS, max_new_tokens=2, **kw)
    ref = model.generate(IDS, max_new_tokens=3, do_sample=False, suppress_tokens=[5000])
    assert torch.equal(fastdecode.generate(model, IDS, max_new_tokens=3, temperature=0, suppress_tokens=[5000],
                                           begin_suppress_tokens=[6000]).sequences, ref)


def test_rows_the_processors_mask_whole(model):
    """Processors that allow no token: greedy decoding emits token 0, as HF (argmax of -inf); sampling is a
    ValueError on every path that names the masking (the static engine's one flag cannot tell it from NaN
    logits, so its message names both), never a silent token."""
    d = draft_of(model)
    kw = dict(suppress_tokens=[3], prefix_allowed_tokens_fn=lambda b, x: [3], max_new_tokens=3)
    for method, extra in (("autoregressive", {}), ("speculative", dict(draft=d)),
                          ("multi_draft", dict(draft=d, num_drafts=2)), ("prompt_lookup", {})):
        for engine in ("dynamic", "static"):
            out = fastdecode.generate(model, IDS, method=method, cache_implementation=engine, temperature=0,
                                      **extra, **kw)
            assert out.sequences[0, 5:].tolist() == [0, 0, 0], (method, engine)
            with pytest.raises(ValueError, match="masked every token|every token is masked"):
                fastdecode.generate(model, IDS, method=method, cache_implementation=engine, temperature=1.0, seed=0,
                                    **extra, **kw)


def test_a_custom_processor_or_criterion_of_a_built_type_takes_its_place(model):
    """As in HF generate: the caller's RepetitionPenaltyLogitsProcessor replaces the penalty the generation config
    (or the argument) sets, and a MaxLengthCriteria / MaxTimeCriteria replaces the length / time limit HF builds,
    each with a warning."""
    from transformers import (LogitsProcessorList, MaxLengthCriteria, MaxTimeCriteria,
                              RepetitionPenaltyLogitsProcessor, SequenceBiasLogitsProcessor, StoppingCriteriaList)

    ids = torch.tensor([[5, 6, 7, 5, 6, 7, 5, 6]])
    procs = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(0.5)])
    ref = model.generate(ids, do_sample=False, max_new_tokens=12, repetition_penalty=0.5)
    assert not torch.equal(ref, model.generate(ids, do_sample=False, max_new_tokens=12, repetition_penalty=1.3,
                                               logits_processor=LogitsProcessorList([RepetitionPenaltyLogitsProcessor(0.5),
                                                                                     RepetitionPenaltyLogitsProcessor(1.3)])))
    model.generation_config.repetition_penalty = 1.3
    try:
        with pytest.warns(UserWarning, match="custom RepetitionPenaltyLogitsProcessor .* takes precedence"):
            out = fastdecode.generate(model, ids, temperature=0, max_new_tokens=12, logits_processor=procs)
    finally:
        model.generation_config.repetition_penalty = None
    assert torch.equal(out.sequences, ref)
    bias = {(6,): 3.0, (7,): 2.0, (5,): 2.5}   # (in the built bias's slot, before the penalty: (l + b) / r)
    procs = LogitsProcessorList([SequenceBiasLogitsProcessor(bias)])
    ref = model.generate(ids, do_sample=False, max_new_tokens=12, repetition_penalty=1.8, sequence_bias=bias,
                         logits_processor=procs)
    with pytest.warns(UserWarning, match="custom SequenceBiasLogitsProcessor .* takes precedence"):
        out = fastdecode.generate(model, ids, temperature=0, max_new_tokens=12, repetition_penalty=1.8,
                                  sequence_bias=bias, logits_processor=procs)
    assert torch.equal(out.sequences, ref)
    crit = StoppingCriteriaList([MaxLengthCriteria(max_length=14)])
    ref = model.generate(ids, do_sample=False, max_new_tokens=3, stopping_criteria=crit)
    for engine in ("dynamic", "static"):
        with pytest.warns(UserWarning, match="custom MaxLengthCriteria .* takes precedence"):
            out = fastdecode.generate(model, ids, draft=draft_of(model), temperature=0, max_new_tokens=3,
                                      stopping_criteria=crit, cache_implementation=engine)
        assert torch.equal(out.sequences, ref) and ref.shape[1] == 14, engine
    crit = StoppingCriteriaList([MaxTimeCriteria(max_time=600)])
    with pytest.warns(UserWarning, match="custom MaxTimeCriteria .* takes precedence"):
        out = fastdecode.generate(model, ids, temperature=0, max_new_tokens=5, max_time=0, stopping_criteria=crit)
    assert out.sequences.shape[1] == 13   # (max_time=0 alone gives one token)


def test_a_custom_stop_string_criterion_replaces_stop_strings(code_pair, stdlib_prompts):
    from transformers import StopStringCriteria, StoppingCriteriaList

    target, _, tok = code_pair
    ids = torch.tensor([stdlib_prompts[0][:20]])
    crit = StoppingCriteriaList([StopStringCriteria(tokenizer=tok, stop_strings=["return"])])
    ref = target.generate(ids, max_new_tokens=40, do_sample=False, stop_strings=[":"], tokenizer=tok,
                          stopping_criteria=crit)
    with pytest.warns(UserWarning, match="custom StopStringCriteria .* takes precedence"):
        out = fastdecode.generate(target, ids, temperature=0, max_new_tokens=40, stop_strings=[":"], tokenizer=tok,
                                  stopping_criteria=crit)
    assert torch.equal(out.sequences, ref)
    assert not torch.equal(ref, target.generate(ids, max_new_tokens=40, do_sample=False, stop_strings=[":"],
                                                tokenizer=tok))


def test_hf_defaults_and_names_for_fastdecodes_settings(model):
    """HF's default values pass (do_sample=False with temperature=1.0, None for any of its options,
    penalty_alpha=0.0, disable_compile=False, bos_token_id); the generation config's output_scores is read;
    assisted generation's names set fastdecode's draft settings; token type ids in the prompt's shape."""
    from transformers import GenerationConfig

    ref = model.generate(IDS, max_new_tokens=4, do_sample=False)
    for kw in (dict(do_sample=False, temperature=1.0), dict(prompt_lookup_num_tokens=None, num_assistant_tokens=None,
                                                            assistant_confidence_threshold=None, bos_token_id=7),
               dict(cache_implementation=None, output_scores=None, penalty_alpha=0.0, disable_compile=False)):
        out = fastdecode.generate(model, IDS, max_new_tokens=4, **{"do_sample": False, **kw})
        assert torch.equal(out.sequences, ref), kw
    gc = GenerationConfig(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_scores=True)
    assert len(fastdecode.generate(model, IDS, generation_config=gc).scores) == 4
    d = draft_of(model)
    a = fastdecode.generate(model, IDS, draft=d, max_new_tokens=8, seed=1, draft_length=3, adaptive_draft=False)
    b = fastdecode.generate(model, IDS, draft=d, max_new_tokens=8, seed=1, num_assistant_tokens=3,
                            num_assistant_tokens_schedule="constant")
    assert torch.equal(a.sequences, b.sequences) and len(b.stats.position_drafted) == 3   # (drafts of 3)
    with pytest.raises(ValueError, match="num_assistant_tokens= \\(HF's name\\) and draft_length= both given"):
        fastdecode.generate(model, IDS, draft=d, draft_length=2, num_assistant_tokens=3)
    with pytest.raises(ValueError, match="num_assistant_tokens_schedule must be one of"):
        fastdecode.generate(model, IDS, draft=d, num_assistant_tokens_schedule="fast")
    with pytest.raises(ValueError, match="disable_compile= is an option.*compile=False"):
        fastdecode.generate(model, IDS, disable_compile=True)
    assert torch.equal(fastdecode.generate(model, IDS, token_type_ids=[[0] * 5], max_new_tokens=4,
                                           temperature=0).sequences, ref)
    with pytest.raises(ValueError, match="token_type_ids has shape \\(3, 9\\), but input_ids has shape \\(1, 5\\)"):
        fastdecode.generate(model, IDS, token_type_ids=torch.zeros(3, 9, dtype=torch.long))
    model.generation_config.output_hidden_states = True
    try:
        with pytest.warns(UserWarning, match="sets output_hidden_states=True, which HF generate would apply"):
            fastdecode.generate(model, IDS, max_new_tokens=2, temperature=0)
    finally:
        model.generation_config.output_hidden_states = None


def test_a_custom_eos_criterion_replaces_the_eos_ids(model):
    """As in HF: the caller's EosTokenCriteria takes the place of the EOS ids as a stop (with a warning); the EOS
    ids still hold EOS back for min_new_tokens; in a batch, finished rows are padded."""
    from transformers import EosTokenCriteria, StoppingCriteriaList

    plain = model.generate(IDS, max_new_tokens=12, do_sample=False)[0, 5:].tolist()
    crit = StoppingCriteriaList([EosTokenCriteria(eos_token_id=plain[6])])
    ref = model.generate(IDS, max_new_tokens=12, do_sample=False, eos_token_id=plain[2], stopping_criteria=crit)
    assert ref.shape[1] == 5 + 7
    for engine in ("dynamic", "static"):
        with pytest.warns(UserWarning, match="custom EosTokenCriteria .* takes precedence"):
            out = fastdecode.generate(model, IDS, draft=draft_of(model), temperature=0, max_new_tokens=12,
                                      eos_token_id=plain[2], stopping_criteria=crit, cache_implementation=engine)
        assert torch.equal(out.sequences, ref), engine
    batch = torch.tensor([[0, 0, 11, 22, 33], [1, 2, 3, 4, 5]])
    ref = model.generate(batch, pad_token_id=0, max_new_tokens=12, do_sample=False, eos_token_id=plain[2],
                         stopping_criteria=crit)
    with pytest.warns(UserWarning, match="custom EosTokenCriteria"):
        out = fastdecode.generate(model, batch, pad_token_id=0, temperature=0, max_new_tokens=12,
                                  eos_token_id=plain[2], stopping_criteria=crit)
    assert torch.equal(out.sequences, ref)
