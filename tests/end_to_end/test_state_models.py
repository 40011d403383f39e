"""Models whose layers keep a recurrent state (linear attention, Mamba-2, short convolutions; alone or in hybrids):
every method that drafts rewinds their caches by snapshots and feeding again (``decoding/state_cache.py``).

- the allowlist ``CONTINUES_STATE`` rests on one property, tested here for each of its types: a forward of
  several tokens on top of a cache continues the state as the same tokens fed one by one would;
- greedy output equals HF ``generate`` for every drafting method (rejections included), alone and in batches;
- a rewound cache gives the logits of a cache fed only the kept tokens; without restoring the snapshot it
  does not (the check can fail);
- the first two sampled tokens follow the target's exact law (chi-square, enumeration);
- types outside the allowlist (Mamba-1 mixers restart their scan), draft trees and the static engine are
  refused with a ValueError naming the model type.
"""
import copy

import pytest
import torch
from transformers import DynamicCache

import fastdecode
from distribution import chi_square_pvalue, exact_law, sample_law
from fastdecode.decoding import hf_cache as kv
from fastdecode.decoding import state_cache
from tiny_models import tiny_lm

MIXED = ["linear_attention", "full_attention"]
# tiny configs with both kinds of layers, per model type of CONTINUES_STATE
CONFIGS = {
    "falcon_h1": {}, "mamba2": dict(num_heads=4, head_dim=32, n_groups=1, expand=2),
    "lfm2": dict(layer_types=["conv", "full_attention"]), "lfm2_moe": dict(layer_types=["conv", "full_attention"]),
    "lfm3": dict(layer_types=["conv", "full_attention"], head_dim=16),
    "qwen3_next": dict(layer_types=MIXED), "qwen3_5_text": dict(layer_types=MIXED),
    "qwen3_5_moe_text": dict(layer_types=MIXED), "granitemoehybrid": dict(layer_types=["mamba", "attention"]),
    "nemotron_h": dict(hybrid_override_pattern="M*"), "olmo_hybrid": {},
    "inkling_text": {}, "lara_mini": {}, "zaya": {}, "zamba": dict(layers_block_type=["mamba", "hybrid"]),
}
# the composite types (vision + text) whose text model is one of the above
TEXT_OF = {"qwen3_5": "qwen3_5_text", "qwen3_5_moe": "qwen3_5_moe_text"}
GREEDY = ["qwen3_next", "zaya", "lfm2", "mamba2"]   # one per kind: gated delta net, hybrid layer, conv, pure SSM
NEW = 14
RUNS = 250   # seeded runs of the law test (under a third of LAW_RUNS: this model's runs are slower)


def _model(model_type, seed=1, **kw):
    return tiny_lm(model_type, 2, seed=seed, **{**CONFIGS.get(model_type, {}), **kw})


def _noisy(model, scale=0.15):
    """The model with noise on its weights: a draft that agrees on some tokens, not all."""
    draft = copy.deepcopy(model)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale * p.std().nan_to_num(0.02))
    return draft


def _prompt():
    return torch.cat([torch.randint(0, 512, (6,), generator=torch.Generator().manual_seed(3)),
                      torch.tensor([5, 9, 13, 77, 5, 9])])[None]


def test_allowlist_is_covered():
    assert set(CONFIGS) | set(TEXT_OF) == set(state_cache.CONTINUES_STATE)


@pytest.mark.parametrize("model_type", sorted(CONFIGS))
def test_forwards_of_several_tokens_continue_the_state(model_type):
    """The property rewinding by feeding again rests on: cache(prefix) + forward(4 tokens) gives the logits of
    the 4 tokens fed one by one. The check can tell: a forward whose state restarts from zero (what Mamba-1 mixers
    do with several tokens) moves the logits by at least ten times the tolerance on every type."""
    model = _model(model_type)
    assert state_cache.state_model_type(model) == model_type
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        one = DynamicCache(config=model.config)
        model(input_ids=ids[:, :8], cache=one)
        steps = torch.cat([model(input_ids=ids[:, i:i + 1], cache=one).logits for i in range(8, 12)], 1)
        chunk = DynamicCache(config=model.config)
        model(input_ids=ids[:, :8], cache=chunk)
        together = model(input_ids=ids[:, 8:], cache=chunk).logits
        restart = DynamicCache(config=model.config)
        model(input_ids=ids[:, :8], cache=restart)
        for layer in filter(state_cache.is_state_layer, restart.layers):
            for t in [*layer.conv_states.values(), *layer.recurrent_states.values()]:
                if t is not None:
                    t.zero_()
        restarted = model(input_ids=ids[:, 8:], cache=restart).logits
    torch.testing.assert_close(together, steps, atol=1e-5, rtol=0)
    assert float((restarted - steps).abs().max()) > 1e-4


@pytest.mark.parametrize("model_type", GREEDY)
def test_every_drafting_method_equals_hf_greedy(model_type):
    target = _model(model_type)
    draft = _noisy(target)
    ids = _prompt()
    ref = target.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    runs = [("autoregressive", None, {}), ("speculative", draft, dict(draft_length=3, adaptive_draft=False)),
            ("speculative", draft, dict(verifier="block", draft_length=3)), ("speculative", draft, {}),
            ("prompt_lookup", None, {}), ("prompt_lookup", draft, {}),
            ("entropy_switch", draft, dict(entropy_threshold=float("-inf"), speculate_when_large=True))]
    rejected = 0
    for method, d, kw in runs:
        out = fastdecode.generate(target, ids, draft=d, method=method, temperature=0, max_new_tokens=NEW,
                                  min_new_tokens=NEW, **kw)
        assert torch.equal(out.sequences, ref), f"{model_type}: {method} {kw} differs from HF greedy"
        rejected += out.stats.drafted_tokens - out.stats.accepted_tokens
    assert rejected > 0   # rewinds happened


def test_without_restoring_the_snapshot_the_output_differs(monkeypatch):
    """The greedy test above can fail: a rewind that crops the attention layers but leaves the recurrent state
    as the rejected drafts left it gives other tokens."""
    target = _model("mamba2")   # no attention layer: the state is all the context there is
    draft = _noisy(target)
    ids = _prompt()
    ref = target.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    monkeypatch.setattr(state_cache, "_restore", lambda cache, snap: None)
    out = fastdecode.generate(target, ids, draft=draft, method="speculative", temperature=0, max_new_tokens=NEW,
                              min_new_tokens=NEW, draft_length=3, adaptive_draft=False)
    assert not torch.equal(out.sequences, ref)


@pytest.mark.parametrize("back", [1, 3, 5])
def test_a_rewound_cache_equals_one_fed_only_the_kept_tokens(back):
    """Five one-token forwards, then a crop ``back`` positions: to a snapshot of its own (1, 3) or, past the newest
    RECENT ones, to the first after the last commit (5), the tokens after it then fed with the next forward (as
    every decoding loop feeds ``tokens[cache_length:]``); the next logits equal a fresh cache's."""
    model = _model("qwen3_next")
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = kv.new_cache(model)
        kv.forward(model, ids[:, :6], cache)
        kv.crop(cache, 6)   # a commit (as after a step): the next forward's snapshot is kept first
        for i in range(6, 11):
            kv.forward(model, ids[:, i:i + 1], cache)
        kv.crop(cache, 11 - back)
        kept = kv.cache_length(cache)
        assert kept == (11 - back if back < 5 else 6)
        got = kv.forward(model, ids[:, kept:12 - back], cache)[:, -1:]
        want = kv.forward(model, ids[:, :12 - back], kv.new_cache(model))[:, -1:]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_a_crop_below_the_last_commit_is_an_error():
    model = _model("lfm2")
    ids = torch.randint(0, 512, (1, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cache = kv.new_cache(model)
        kv.forward(model, ids[:, :8], cache)
        kv.crop(cache, 8)   # a commit at 8
        kv.forward(model, ids[:, 8:], cache)
        with pytest.raises(ValueError, match="cannot rewind"):
            kv.crop(cache, 6)


def test_sampled_law_is_the_target_s():
    """Exact law of the first two tokens (enumeration) against RUNS seeded speculative runs on a Mamba-2 model (its
    state all the context there is) with a six-token vocabulary, its draft rejected often. Without restoring the
    snapshots, 800 runs scored p = 1.7e-18, 400 p = 1.6e-11 and these 250 p = 7.8e-9 (checked by hand)."""
    target = _model("mamba2", vocab_size=6)
    draft = _model("mamba2", seed=2, vocab_size=6, scale=2.0)
    prompt = [1, 2, 3, 4]
    counts = sample_law(target, draft, prompt, 2, RUNS, max_new_tokens=3, temperature=1.0,
                        method="speculative", draft_length=2, adaptive_draft=False)
    assert chi_square_pvalue(counts, exact_law(target, prompt, 2)) > 1e-3


def test_batches_equal_hf():
    """Plain decoding runs the batch together (finished rows selected away, their states too); drafting methods
    run its rows one by one."""
    target = _model("qwen3_next")
    ids = torch.randint(1, 512, (3, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[0, :4] = mask[0, :4] = 0
    ids[2, :2] = mask[2, :2] = 0
    free = target.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    eos = int(free[1, -9])   # row 1 stops early
    ref = target.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0,
                          eos_token_id=eos)
    for method, draft, alone in (("autoregressive", None, False), ("speculative", _noisy(target), True),
                                 ("prompt_lookup", None, True)):
        out = fastdecode.generate(target, ids, attention_mask=mask, draft=draft, method=method, temperature=0,
                                  max_new_tokens=12, pad_token_id=0, eos_token_id=eos)
        assert torch.equal(out.sequences, ref), method
        assert bool(out.stats.extra.get("rows_one_by_one", False)) == alone, method


def test_refusals_name_the_model_type():
    mamba = tiny_lm("mamba", 2, seed=1)   # Mamba-1 mixers: a forward of several tokens restarts the scan
    ids = torch.randint(0, 512, (1, 6), generator=torch.Generator().manual_seed(0))
    ref = mamba.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    out = fastdecode.generate(mamba, ids, temperature=0, max_new_tokens=6, min_new_tokens=6)
    assert torch.equal(out.sequences, ref)   # plain decoding works
    for method in ("speculative", "prompt_lookup"):
        with pytest.raises(ValueError, match="model type 'mamba'\\) keeps a recurrent state.*method='autoregressive'"):
            fastdecode.generate(mamba, ids, draft=mamba if method == "speculative" else None, method=method,
                                max_new_tokens=4)
    hybrid = _model("qwen3_next")
    with pytest.raises(ValueError, match="'multi_draft' cannot run.*'qwen3_next'\\) keeps a recurrent state"):
        fastdecode.generate(hybrid, ids, draft=hybrid, method="multi_draft", num_drafts=2, max_new_tokens=4)
    with pytest.raises(ValueError, match="static engine supports full and sliding-window attention layers only"):
        fastdecode.generate(hybrid, ids, max_new_tokens=4, cache_implementation="static")


def test_a_rewind_adds_no_forward():
    """Rejected drafts cost no extra target forward: the accepted tokens go into the next verification. Every
    forward the target runs is one of the steps the statistics count."""
    target = _model("qwen3_next")
    draft, calls = _noisy(target), []
    hook = target.register_forward_hook(lambda *args: calls.append(1))
    try:
        out = fastdecode.generate(target, _prompt(), draft=draft, method="speculative", temperature=0,
                                  max_new_tokens=NEW, min_new_tokens=NEW, draft_length=3, adaptive_draft=False)
    finally:
        hook.remove()
    assert out.stats.drafted_tokens > out.stats.accepted_tokens   # drafts were rejected (rewinds happened)
    assert len(calls) == out.stats.target_calls
