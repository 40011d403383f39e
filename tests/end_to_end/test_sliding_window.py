"""Sliding-window and hybrid (windowed + full) attention: every method's greedy output equals HF ``generate``
with prompt + output well past the window (window 8, prompt 12, 24 new tokens)."""
import functools

import pytest
import torch

import fastdecode
from fastdecode.decoding import hf_cache as kv
from tiny_models import draft_of, hf_greedy, tiny_lm

WINDOW, PROMPT, NEW = 8, 12, 24

CONFIGS = {
    "gemma2": dict(sliding_window=WINDOW),  # alternating sliding / full layers
    "gemma3_text": dict(sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"]),
    "mistral": dict(sliding_window=WINDOW),  # every layer windowed, no layer_types
    "phi3": dict(sliding_window=WINDOW),
    # layer 0 full, layer 1 windowed
    "qwen2": dict(sliding_window=WINDOW, use_sliding_window=True, max_window_layers=1),
    "starcoder2": dict(sliding_window=WINDOW),
    "mixtral": dict(sliding_window=WINDOW),
    "cohere2": dict(sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"]),
    "olmo3": dict(sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"]),
    "exaone4": dict(sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"]),
    "gpt_oss": dict(sliding_window=WINDOW, layer_types=["sliding_attention", "full_attention"]),
}

METHODS = [
    ("autoregressive", {}),
    ("speculative", dict(draft_length=3, adaptive_draft=False)),
    ("speculative", dict(verifier="block", draft_length=4)),
    ("multi_draft", dict(num_drafts=2, draft_length=3)),
    ("multi_draft", dict(num_drafts=3, draft_length=4)),
    ("entropy_switch", dict(entropy_threshold=float("-inf"), speculate_when_large=True)),  # target alone, verifying
    ("entropy_switch", dict(entropy_threshold=float("-inf"))),
]


@functools.lru_cache(maxsize=None)
def _case(model_type):
    target = tiny_lm(model_type, 2, seed=1, **CONFIGS[model_type])
    prompt = torch.randint(0, target.config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    return target, draft_of(target), prompt, hf_greedy(target, prompt, NEW)


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
@pytest.mark.parametrize("method,kw", METHODS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(METHODS)])
def test_greedy_equals_hf_past_the_window(model_type, method, kw):
    target, draft, prompt, ref = _case(model_type)
    assert kv.attention_layout(target)[0] == WINDOW
    for d in ((draft, target) if method == "multi_draft" else (draft,)):  # self-draft: long accepted paths
        out = fastdecode.generate(target, prompt, draft=None if method == "autoregressive" else d, method=method,
                                  temperature=0, max_new_tokens=NEW, **kw)
        assert torch.equal(out.sequences, ref), f"{model_type} {method} {kw} differs from HF greedy"


def test_window_in_tree_mask_matters():
    """Without the window the multi-draft tree gives other tokens: the test above would see a missing window."""
    target, _, prompt, ref = _case("mistral")
    orig = kv.attention_layout
    try:
        kv.attention_layout = lambda model: (None, None)
        out = fastdecode.generate(target, prompt, draft=target, method="multi_draft", num_drafts=2, draft_length=3,
                                  temperature=0, max_new_tokens=NEW)
    finally:
        kv.attention_layout = orig
    assert not torch.equal(out.sequences, ref)


def test_new_cache_has_full_layers_and_select_keeps_lengths():
    target = _case("gemma2")[0]
    cache = kv.new_cache(target)
    assert not any(cache.is_sliding)
    kv.forward(target, torch.arange(20)[None], cache)
    kv.select(cache, torch.tensor([0, 1, 2, 5, 7]))
    assert kv.cache_length(cache) == 5 and all(layer.keys.shape[-2] == 5 for layer in cache.layers)
    kv.crop(cache, 3)
    assert kv.cache_length(cache) == 3


def test_select_refuses_a_window_layer_that_dropped_keys():
    from transformers import DynamicCache
    target = _case("mistral")[0]
    cache = DynamicCache(config=target.config)  # transformers' own windowed layers
    kv.forward(target, torch.arange(20)[None], cache)
    with pytest.raises(ValueError, match="dropped old keys"):
        kv.select(cache, torch.tensor([0, 1]))
    small = DynamicCache(config=target.config)
    kv.forward(target, torch.arange(5)[None], small)  # within the window: still selectable, lengths kept
    kv.select(small, torch.tensor([0, 1, 3]))
    assert kv.cache_length(small) == 3


@pytest.mark.parametrize("model_type", ["gemma2", "mistral"])
def test_entropy_switching_and_sampling_past_the_window(model_type):
    """Lossy entropy switching (both models take turns, catch-ups crop and refill both caches) and sampled
    multi-draft run past the window without errors and with in-range ids."""
    target, draft, prompt, _ = _case(model_type)
    out = fastdecode.generate(target, prompt, draft=draft, method="entropy_switch", temperature=0,
                              max_new_tokens=NEW, entropy_threshold=0.5, min_dwell=2)
    assert out.sequences.shape[1] == PROMPT + NEW and out.stats.extra["switches"] > 0
    for method, kw in [("multi_draft", dict(num_drafts=3)), ("speculative", {})]:
        out = fastdecode.generate(target, prompt, draft=draft, method=method, max_new_tokens=NEW, seed=0, **kw)
        assert out.sequences.shape[1] == PROMPT + NEW and int(out.sequences.max()) < target.config.vocab_size


@pytest.mark.parametrize("method,kw", [("multi_draft", dict(num_drafts=2, draft_length=2)),
                                       ("speculative", dict(draft_length=2, adaptive_draft=False))])
def test_sampled_two_token_law_past_the_window(method, kw):
    """Sampling stays lossless past a window of 2 (prompt of 4): exact law of the first two tokens by
    enumeration with full forwards (the model's own windowed mask) against LAW_RUNS seeded generations."""
    from distribution import LAW_RUNS, chi_square_pvalue, exact_law, sample_law

    target = tiny_lm("mistral", 2, seed=1, vocab_size=6, sliding_window=2)
    draft = draft_of(target)
    prompt = [1, 2, 3, 4]
    counts = sample_law(target, draft, prompt, 2, LAW_RUNS, max_new_tokens=3, temperature=1.0, method=method, **kw)
    assert chi_square_pvalue(counts, exact_law(target, prompt, 2)) > 1e-3
