"""method="prompt_lookup": the n-gram match finder, greedy equality with HF (plain and HF's own prompt lookup),
the sampled law of runs that draft (token and block rules with one-hot q), and option errors."""
import random

import pytest
import torch

import fastdecode
from distribution import LAW_RUNS, accept_every_draft, caught, chi_square_pvalue, exact_law, sample_law
from fastdecode.config import PromptLookupConfig, build_method_config
from fastdecode.decoding.prompt_lookup import NgramIndex, propose_reference
from tiny_models import hf_greedy, tiny_lm


def _propose(tokens, k, max_n=2, min_n=1):
    return NgramIndex(max_n, min_n).propose(list(tokens), k)


# ------------------------------------------------------------------ match finder

def test_latest_match_wins():
    # "1 2" occurs twice before the tail: the later one (followed by 7 8) wins over the earlier (5 6)
    assert _propose([1, 2, 5, 6, 1, 2, 7, 8, 9, 1, 2], 2) == [7, 8]


def test_longest_n_first():
    # the bigram "3 4" matches once (followed by 9); the unigram "4" matches later (followed by 5)
    tokens = [3, 4, 9, 0, 4, 5, 3, 4]
    assert _propose(tokens, 1, max_n=2) == [9]
    assert _propose(tokens, 1, max_n=1) == [5]


def test_shorter_n_when_the_longest_has_no_match():
    assert _propose([7, 1, 5, 6, 2, 1], 2, max_n=3) == [5, 6]  # "6 2 1", "2 1" unseen, "1" seen


def test_no_match():
    assert _propose([1, 2, 3, 4, 5], 4) == []
    assert _propose([1], 4) == []
    assert _propose([1, 2, 3, 1, 2], 4, max_n=3, min_n=3) == []  # only "1 2" repeats: below min_n


def test_match_at_the_very_end_continues_the_copy():
    # "a b" ends right before the tail: one token follows it in the text, the copy goes on from itself
    assert _propose([1, 2, 1, 2], 5) == [1, 2, 1, 2, 1]
    assert _propose([4, 4, 4], 3) == [4, 4, 4]  # overlapping the tail: the trailing "4 4" is never its own match
    assert _propose([9, 1, 2, 3, 1, 2], 6) == [3, 1, 2, 3, 1, 2]


def test_budget_cut():
    tokens = [1, 2, 3, 4, 5, 6, 7, 8, 1, 2]
    assert _propose(tokens, 3) == [3, 4, 5]
    assert _propose(tokens, 1) == [3]
    assert _propose(tokens, 0) == []


def test_incremental_index_equals_a_full_scan():
    """The index, grown a few tokens at a time, proposes what a plain backwards scan of the whole text does."""
    rng = random.Random(0)
    for trial in range(30):
        max_n, min_n = rng.randint(1, 4), 1
        min_n = rng.randint(1, max_n)
        index, tokens = NgramIndex(max_n, min_n), []
        for _ in range(40):
            tokens += [rng.randrange(4) for _ in range(rng.randint(1, 3))]
            k = rng.randint(1, 8)
            assert index.propose(tokens, k) == propose_reference(tokens, k, max_n, min_n), (trial, tokens, k)


# ------------------------------------------------------------------ greedy equality

REPETITIVE = [5, 9, 13, 7, 5, 9, 13, 7, 5, 9, 13, 7, 5, 9, 40, 41, 5, 9]


@pytest.fixture(scope="module")
def tiny_target():
    return tiny_lm("llama", seed=0)


@pytest.mark.parametrize("kw", [dict(), dict(verifier="block"), dict(adaptive_draft=False),
                                dict(prompt_lookup_num_tokens=3, max_matching_ngram_size=3, min_matching_ngram_size=2)])
def test_greedy_equals_hf(tiny_target, kw):
    prompt = torch.tensor([REPETITIVE])
    ref = hf_greedy(tiny_target, prompt, 48)
    out = fastdecode.generate(tiny_target, prompt, method="prompt_lookup", max_new_tokens=48, temperature=0,
                              fallback="off", **kw)   # (off: drafting steps whatever the timings)
    assert torch.equal(out.sequences, ref)
    assert out.stats.drafted_tokens > 0 and out.stats.accepted_tokens > 0
    assert out.stats.target_calls < 48


def test_greedy_equals_hf_prompt_lookup(tiny_target):
    prompt = torch.tensor([REPETITIVE])
    with torch.inference_mode():
        ref = tiny_target.generate(prompt, prompt_lookup_num_tokens=10, do_sample=False, max_new_tokens=40,
                                   min_new_tokens=40)
    out = fastdecode.generate(tiny_target, prompt, method="prompt_lookup", max_new_tokens=40, temperature=0)
    assert torch.equal(out.sequences, ref)


def test_no_match_is_a_plain_step(tiny_target):
    """All-distinct text with min_matching_ngram_size=2: nothing to copy, one target forward per token."""
    prompt = torch.tensor([[1, 2, 3, 4, 5, 6]])
    out = fastdecode.generate(tiny_target, prompt, method="prompt_lookup", max_new_tokens=1, temperature=0)
    assert out.stats.drafted_tokens == 0 and out.stats.target_calls == 1
    ref = hf_greedy(tiny_target, prompt, 12)
    out = fastdecode.generate(tiny_target, prompt, method="prompt_lookup", max_new_tokens=12, temperature=0,
                              max_matching_ngram_size=3, min_matching_ngram_size=3)
    assert torch.equal(out.sequences, ref)


def test_budget_and_eos(tiny_target):
    prompt = torch.tensor([REPETITIVE])
    ref = hf_greedy(tiny_target, prompt, 30)[0, len(REPETITIVE):].tolist()
    for n in (1, 2, 7):
        out = fastdecode.generate(tiny_target, prompt, method="prompt_lookup", max_new_tokens=n, temperature=0)
        assert out.sequences[0, len(REPETITIVE):].tolist() == ref[:n]
    eos = ref[5]
    out = fastdecode.generate(tiny_target, prompt, method="prompt_lookup", max_new_tokens=30, temperature=0,
                              eos_token_id=eos)
    assert out.sequences[0, len(REPETITIVE):].tolist() == ref[:ref.index(eos) + 1]


def test_seeded_sampling_is_reproducible(tiny_target):
    prompt = torch.tensor([REPETITIVE])
    a, b = (fastdecode.generate(tiny_target, prompt, method="prompt_lookup", max_new_tokens=20, temperature=0.7,
                                seed=3) for _ in range(2))
    assert torch.equal(a.sequences, b.sequences)


def test_code_pair_greedy_equals_hf_and_hf_prompt_lookup(code_pair, stdlib_prompts):
    target, _, _ = code_pair
    for prompt in stdlib_prompts[:3]:
        ids = torch.tensor([prompt + prompt[:16]])  # the prompt's start again: something to copy
        with torch.inference_mode():
            ref = target.generate(ids, max_new_tokens=48, min_new_tokens=48, do_sample=False)
            ref_pl = target.generate(ids, max_new_tokens=48, min_new_tokens=48, do_sample=False,
                                     prompt_lookup_num_tokens=10)
        out = fastdecode.generate(target, ids, method="prompt_lookup", max_new_tokens=48, temperature=0,
                                  eos_token_id=[], fallback="off")
        assert torch.equal(out.sequences, ref)
        assert torch.equal(ref_pl, ref)
        assert out.stats.accepted_tokens > 0


# ------------------------------------------------------------------ sampled law (V = 6 tiny pair)

LAW_PROMPT = [1, 2, 3, 1, 2, 3, 1, 2]  # "1 2" matches: every run drafts "3 1" for the first two tokens
RUNS = LAW_RUNS
ALPHA = 1e-3


@pytest.fixture(scope="module")
def law2(tiny_pair):
    return exact_law(tiny_pair[0], LAW_PROMPT, 2)


def _pvalue(tiny_pair, law2, broken=False, **kw):
    counts = sample_law(tiny_pair[0], None, LAW_PROMPT, 2, RUNS, max_new_tokens=3, temperature=1.0,
                        method="prompt_lookup", stop_when=caught(law2) if broken else None, **kw)
    return chi_square_pvalue(counts, law2)


def test_law_runs_draft(tiny_pair):
    out = fastdecode.generate(tiny_pair[0], torch.tensor([LAW_PROMPT]), method="prompt_lookup", max_new_tokens=3,
                              seed=0, eos_token_id=[])
    assert len(out.stats.position_drafted) == 2  # the first step drafted two tokens


@pytest.mark.slow
@pytest.mark.parametrize("verifier", ["token", "block"])
def test_two_token_law(tiny_pair, law2, verifier):
    assert _pvalue(tiny_pair, law2, verifier=verifier) > ALPHA


@pytest.mark.slow
def test_broken_rule_fails(tiny_pair, law2, monkeypatch):
    """Accepting every copied draft (a point mass on the copy) must be caught."""
    from fastdecode.decoding import step

    monkeypatch.setitem(step.CHAIN_VERIFIERS, "token", accept_every_draft)
    assert _pvalue(tiny_pair, law2, broken=True) < ALPHA


# ------------------------------------------------------------------ options

def test_config_defaults_and_options():
    m, cfg = build_method_config("prompt_lookup", False)
    assert m == "prompt_lookup" and cfg == PromptLookupConfig(10, 2, 1, True, "token")
    _, cfg = build_method_config("prompt_lookup", False, prompt_lookup_num_tokens=4, max_matching_ngram_size=3,
                                 min_matching_ngram_size=2, adaptive_draft=False, verifier="block")
    assert cfg == PromptLookupConfig(4, 3, 2, False, "block")
    assert build_method_config("auto", False)[0] == "autoregressive"
    assert build_method_config("auto", True)[0] == "speculative"


@pytest.mark.parametrize("has_draft,kw,message", [
    (False, dict(draft_length=4), "draft_length does not apply"),
    (False, dict(max_draft_length=4), "max_draft_length does not apply"),
    (False, dict(confidence_threshold=0.3), "confidence_threshold does not apply"),
    (False, dict(num_drafts=2), "num_drafts"),
    (False, dict(verifier="rrs"), "verifier must be 'token' or 'block'"),
    (False, dict(entropy_threshold=2.0), "unexpected arguments"),
    (False, dict(prompt_lookup_num_tokens=0), "prompt_lookup_num_tokens must be an int >= 1"),
    (False, dict(max_matching_ngram_size=1.5), "max_matching_ngram_size must be an int"),
    (False, dict(max_matching_ngram_size=2, min_matching_ngram_size=3), "must be <= max_matching_ngram_size"),
    (False, dict(adaptive_draft="yes"), "adaptive_draft must be"),
])
def test_bad_options(has_draft, kw, message):
    with pytest.raises(ValueError, match=message):
        build_method_config("prompt_lookup", has_draft, **kw)


def test_prompt_lookup_options_with_other_methods():
    for method in ("speculative", "autoregressive", "multi_draft"):
        with pytest.raises(ValueError, match="unexpected arguments"):
            build_method_config(method, True, prompt_lookup_num_tokens=4)


def test_cli_errors_before_loading_weights(capsys, monkeypatch):
    import fastdecode.models
    from fastdecode.cli import main

    def no_loading(*a, **k):
        raise AssertionError("weights were loaded before the arguments were checked")
    monkeypatch.setattr(fastdecode.models, "load_model", no_loading)
    for bad, message in ((["--draft-length", "3"], "draft_length does not apply"),
                         (["--prompt-lookup-num-tokens", "0"], "prompt_lookup_num_tokens must be"),
                         (["--min-matching-ngram-size", "3"], "must be <= max_matching_ngram_size"),
                         (["--draft", "/no/such/draft"], "no such")):
        assert main(["generate", "--prompt", "x", "--method", "prompt_lookup", *bad]) == 2, bad
        assert message in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--method", "speculative", "--prompt-lookup-num-tokens", "3"]) == 2
    assert "unexpected arguments" in capsys.readouterr().err


def test_lambda_attention(tiny_target):
    """Under Lambda attention (a window shorter than the text) greedy prompt lookup equals greedy decoding
    with the same attention; max_rollback must cover prompt_lookup_num_tokens."""
    from fastdecode import LambdaAttention

    prompt = torch.tensor([REPETITIVE * 2])
    cfg = LambdaAttention(window=16, num_global=2, max_rollback=10)
    ref = fastdecode.generate(tiny_target, prompt, method="autoregressive", max_new_tokens=40, temperature=0,
                              lambda_attention=cfg)
    out = fastdecode.generate(tiny_target, prompt, method="prompt_lookup", max_new_tokens=40, temperature=0,
                              lambda_attention=cfg, fallback="off")   # (off: drafts whatever the timings)
    assert torch.equal(out.sequences, ref.sequences) and out.stats.accepted_tokens > 0
    with pytest.raises(ValueError, match="max_rollback"):
        fastdecode.generate(tiny_target, prompt, method="prompt_lookup", max_new_tokens=4, temperature=0,
                            lambda_attention=LambdaAttention(window=16, num_global=2, max_rollback=4))


# ------------------------------------------------------------------ static engine

@pytest.mark.parametrize("kw", [dict(), dict(adaptive_draft=False, prompt_lookup_num_tokens=5)])
def test_static_greedy_equals_hf(tiny_target, kw):
    prompt = torch.tensor([REPETITIVE])
    ref = hf_greedy(tiny_target, prompt, 40)
    out = fastdecode.generate(tiny_target, prompt, method="prompt_lookup", max_new_tokens=40, temperature=0,
                              cache_implementation="static", fallback="off", **kw)
    assert torch.equal(out.sequences, ref) and out.stats.accepted_tokens > 0


@pytest.mark.parametrize("verifier", ["token", "block"])
def test_static_sampled_runs_and_budget(tiny_target, verifier):
    prompt = torch.tensor([REPETITIVE])
    for n in (1, 3, 17):
        out = fastdecode.generate(tiny_target, prompt, method="prompt_lookup", max_new_tokens=n, temperature=0.8,
                                  seed=1, cache_implementation="static", verifier=verifier, eos_token_id=[])
        assert out.sequences.shape[1] == len(REPETITIVE) + n


@pytest.mark.slow
def test_static_two_token_law(tiny_pair, law2):
    counts = sample_law(tiny_pair[0], None, LAW_PROMPT, 2, RUNS, max_new_tokens=3, temperature=1.0,
                        method="prompt_lookup", cache_implementation="static")
    assert chi_square_pvalue(counts, law2) > ALPHA


@pytest.mark.slow  # loads the code pair's target
def test_cli_generate_prompt_lookup(capsys):
    from fastdecode.cli import main

    assert main(["generate", "--method", "prompt_lookup", "--max-new-tokens", "16",
                 "--prompt-lookup-num-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "method=prompt_lookup" in out and "draft calls=0" in out


# ------------------------------------------------------------------ with a draft model for the steps without a match

def test_draft_model_fallback_greedy_equals_hf(tiny_target):
    from tiny_models import draft_of

    draft = draft_of(tiny_target)
    prompt = torch.tensor([[3, 8, 21, 5, 9, 13, 7, 5, 9, 13, 7, 60, 61]])
    ref = hf_greedy(tiny_target, prompt, 40)
    for kw in (dict(fallback="off"), dict(min_matching_ngram_size=2, verifier="block", fallback="off")):
        out = fastdecode.generate(tiny_target, prompt, draft=draft, method="prompt_lookup", max_new_tokens=40,
                                  temperature=0, **kw)
        assert torch.equal(out.sequences, ref), kw
        assert out.stats.extra["model_draft_steps"] > 0 and out.stats.draft_calls > 0
        if "verifier" not in kw:  # unigram matches in the generated text: both sources draft
            assert out.stats.extra["ngram_draft_steps"] > 0


@pytest.mark.slow
def test_draft_model_fallback_two_token_law(tiny_pair):
    """[1, 2, 3, 4]: the trailing token never occurred before, so the first step drafts with the model."""
    prompt = [1, 2, 3, 4]
    out = fastdecode.generate(tiny_pair[0], torch.tensor([prompt]), draft=tiny_pair[1], method="prompt_lookup",
                              max_new_tokens=3, seed=0)
    assert out.stats.extra["model_draft_steps"] >= 1
    counts = sample_law(*tiny_pair, prompt, 2, RUNS, max_new_tokens=3, temperature=1.0, method="prompt_lookup")
    assert chi_square_pvalue(counts, exact_law(tiny_pair[0], prompt, 2)) > ALPHA


# ------------------------------------------------------------------ a draft model on the static engine
DRAFT_PROMPT = [3, 8, 21, 5, 9, 13, 7, 5, 9, 13, 7, 60, 61]


@pytest.mark.parametrize("kw", [dict(fallback="off"), dict(adaptive_draft=False, prompt_lookup_num_tokens=3),
                                dict(min_matching_ngram_size=2, verifier="block", fallback="off")])
def test_static_draft_model_fallback_equals_dynamic(tiny_target, kw):
    """Greedy: HF's tokens, and the dynamic engine's steps (n-gram and model drafts, forwards); sampled: the
    dynamic engine's tokens for the same seed (the same draws in the same order)."""
    from tiny_models import draft_of

    draft = draft_of(tiny_target)
    prompt = torch.tensor([DRAFT_PROMPT])
    ref = hf_greedy(tiny_target, prompt, 40)
    args = dict(draft=draft, method="prompt_lookup", max_new_tokens=40, **kw)
    dyn = fastdecode.generate(tiny_target, prompt, temperature=0, **args)
    sta = fastdecode.generate(tiny_target, prompt, temperature=0, cache_implementation="static", **args)
    assert torch.equal(sta.sequences, ref) and torch.equal(dyn.sequences, ref)
    assert sta.stats.extra["model_draft_steps"] > 0
    for name in ("ngram_draft_steps", "model_draft_steps"):
        assert sta.stats.extra[name] == dyn.stats.extra[name], name
    assert (sta.stats.target_calls, sta.stats.draft_calls) == (dyn.stats.target_calls, dyn.stats.draft_calls)
    if kw.get("fallback") == "off" or "adaptive_draft" in kw:
        for seed in range(3):
            a, b = (fastdecode.generate(tiny_target, prompt, temperature=1.0, top_k=8, seed=seed, eos_token_id=[],
                                        cache_implementation=c, **args).sequences for c in ("dynamic", "static"))
            assert torch.equal(a, b), seed


def test_static_draft_model_fallback_lambda(tiny_target):
    """Under Lambda attention (the ring wraps): greedy equals Lambda greedy decoding."""
    from fastdecode import LambdaAttention
    from tiny_models import draft_of

    prompt = torch.tensor([DRAFT_PROMPT * 2])
    cfg = LambdaAttention(window=16, num_global=2, max_rollback=10)
    ref = fastdecode.generate(tiny_target, prompt, method="autoregressive", max_new_tokens=40, temperature=0,
                              lambda_attention=cfg)
    out = fastdecode.generate(tiny_target, prompt, draft=draft_of(tiny_target), method="prompt_lookup",
                              max_new_tokens=40, temperature=0, lambda_attention=cfg, fallback="off",
                              cache_implementation="static")
    assert torch.equal(out.sequences, ref.sequences) and out.stats.extra["model_draft_steps"] > 0


@pytest.mark.slow
def test_static_draft_model_fallback_inductor(tiny_target):
    """Recorded forwards (compile=True): the draft's catch-up after n-gram steps is fed in pieces that fit the
    preallocated cache; greedy equals HF."""
    from tiny_models import draft_of

    prompt = torch.tensor([DRAFT_PROMPT])
    out = fastdecode.generate(tiny_target, prompt, draft=draft_of(tiny_target), method="prompt_lookup",
                              max_new_tokens=24, temperature=0, fallback="off", cache_implementation="static",
                              compile=True)
    assert torch.equal(out.sequences, hf_greedy(tiny_target, prompt, 24))
    assert out.stats.extra["model_draft_steps"] > 0 and out.stats.extra["ngram_draft_steps"] > 0


@pytest.mark.slow
def test_static_draft_model_fallback_two_token_law(tiny_pair):
    prompt = [1, 2, 3, 4]   # no earlier occurrence of the last token: the first step drafts with the model
    counts = sample_law(*tiny_pair, prompt, 2, RUNS, max_new_tokens=3, temperature=1.0, method="prompt_lookup",
                        cache_implementation="static")
    assert chi_square_pvalue(counts, exact_law(tiny_pair[0], prompt, 2)) > ALPHA
