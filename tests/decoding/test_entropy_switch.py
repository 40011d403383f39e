"""Entropy-adaptive decoding (docs/algorithms.md section 5) on the real code pair."""
from __future__ import annotations

import math

import pytest
import torch

from fastdecode import generate, kernels
from fastdecode.decoding import hf_cache as kv
from fastdecode.decoding.entropy_switch import (
    DRAFT, TARGET, EntropySwitchConfig, RollingMean, catch_up, decode, estimated_cost_ratio, may_switch,
    wanted_model)
from fastdecode.config import SamplingConfig
from fastdecode.decoding.stream import TokenStream
from fastdecode.stats import DecodeStats
from prompts import stdlib_prompts

NEW = 14  # new tokens per generation: enough for several switches, cheap on a 2-core CPU


@pytest.fixture(scope="module")
def pair(code_pair):  # the real code pair: these tests are marked slow by conftest.py
    return code_pair


@pytest.fixture(scope="module")
def prompts(pair):
    return [torch.tensor([p]) for p in stdlib_prompts(pair[2], n=2, prompt_tokens=48, seed=3)]


@pytest.fixture(scope="module")
def alone(pair, prompts):
    """Greedy fastdecode autoregressive output of each model alone: {"draft": [seq per prompt], "target": [...]}."""
    target, draft, _ = pair
    return {name: [generate(m, ids, method="autoregressive", max_new_tokens=NEW, temperature=0,
                            eos_token_id=[]).sequences for ids in prompts]
            for name, m in ((DRAFT, draft), (TARGET, target))}


def _switch(pair, ids, trace=None, **opts):
    """Run the decode loop directly (to get a trace), exactly as generate() would."""
    target, draft, _ = pair
    stream = TokenStream(ids, NEW, set())
    stats = DecodeStats(method="entropy_switch")
    with torch.inference_mode():
        decode(target, draft, stream, SamplingConfig(0.0), EntropySwitchConfig(**opts), None, stats, None, trace)
    stats.new_tokens = stream.new_tokens
    return stream.as_tensor("cpu"), stats


# ----------------------------------------------------------------------------- config and rule
@pytest.mark.parametrize("kwargs, word", [
    (dict(entropy_threshold=float("nan")), "entropy_threshold"),
    (dict(entropy_threshold="2"), "entropy_threshold"),
    (dict(entropy_threshold=True), "entropy_threshold"),
    (dict(entropy_window=0), "entropy_window"),
    (dict(entropy_window=2.0), "entropy_window"),
    (dict(min_dwell=0), "min_dwell"),
    (dict(start="large"), "start"),
    (dict(speculate_when_large=1), "speculate_when_large"),
    (dict(draft_length=0), "draft_length"),
    (dict(vocab_size=1), "vocab_size"),
])
def test_config_rejects_bad_values(kwargs, word):
    with pytest.raises(ValueError, match=word):
        EntropySwitchConfig(**kwargs)


def test_config_accepts_infinite_thresholds_and_generate_validates(pair, prompts):
    EntropySwitchConfig(entropy_threshold=math.inf)
    EntropySwitchConfig(entropy_threshold=-math.inf, start="target", vocab_size=8000)
    target, draft, _ = pair
    with pytest.raises(ValueError, match="min_dwell"):
        generate(target, prompts[0], draft=draft, method="entropy_switch", min_dwell=0)
    with pytest.raises(ValueError, match="draft"):
        generate(target, prompts[0], method="entropy_switch")


def test_rolling_mean_warm_up_and_window():
    w = RollingMean(3)
    assert math.isnan(w.mean)
    assert w.mean_with(4.0) == 4.0  # one value seen: its own mean
    w.push(4.0)
    assert w.mean_with(2.0) == 3.0  # two values seen: mean of two, not divided by the window size
    w.push(2.0)
    w.push(6.0)
    assert w.mean == 4.0
    assert w.mean_with(7.0) == 5.0  # (2 + 6 + 7) / 3: the oldest value (4) drops out
    assert w.mean == 4.0  # mean_with does not push


def test_switching_rule_and_dwell():
    assert wanted_model(2.01, 2.0) == TARGET and wanted_model(2.0, 2.0) == DRAFT
    assert wanted_model(0.0, -math.inf) == TARGET and wanted_model(50.0, math.inf) == DRAFT
    assert may_switch(None, 5)  # the first switch is free
    assert not may_switch(3, 4) and may_switch(4, 4)
    assert estimated_cost_ratio(0.43, 3, 11) == pytest.approx(0.585, abs=1e-3)  # the paper's LLaMA numbers
    assert estimated_cost_ratio(0.25, 1.5, 14) == pytest.approx(0.330, abs=1e-3)  # and Qwen's


# ----------------------------------------------------------------------------- extremes = one model alone
@pytest.mark.parametrize("start", [DRAFT, TARGET])
def test_infinite_thresholds_reproduce_each_model_alone(pair, prompts, alone, start):
    target, draft, _ = pair
    for i, ids in enumerate(prompts if start == DRAFT else prompts[:1]):
        small = generate(target, ids, draft=draft, method="entropy_switch", entropy_threshold=math.inf,
                         start=start, max_new_tokens=NEW, temperature=0, eos_token_id=[])
        assert torch.equal(small.sequences, alone[DRAFT][i])
        assert small.stats.extra["tokens_by_target"] == 0 and small.stats.extra["large_fraction"] == 0
        large = generate(target, ids, draft=draft, method="entropy_switch", entropy_threshold=-math.inf,
                         start=start, max_new_tokens=NEW, temperature=0, eos_token_id=[])
        assert torch.equal(large.sequences, alone[TARGET][i])
        assert large.stats.extra["large_fraction"] == 1.0
        assert small.stats.lossy and large.stats.lossy


def test_small_alone_matches_hugging_face_greedy(pair, prompts, alone):
    """The reference above (fastdecode autoregressive) is itself Hugging Face greedy decoding."""
    _, draft, _ = pair
    with torch.inference_mode():
        hf = draft.generate(prompts[0], attention_mask=torch.ones_like(prompts[0]), max_new_tokens=NEW,
                            do_sample=False, eos_token_id=None, pad_token_id=0)
    assert alone[DRAFT][0][0].tolist() == hf[0].tolist()


def test_speculate_when_large_is_lossless(pair, prompts, alone):
    target, draft, _ = pair
    for i, ids in enumerate(prompts[:1]):
        out = generate(target, ids, draft=draft, method="entropy_switch", entropy_threshold=-math.inf,
                       speculate_when_large=True, draft_length=3, max_new_tokens=NEW, temperature=0,
                       eos_token_id=[])
        assert torch.equal(out.sequences, alone[TARGET][i])
        assert out.stats.drafted_tokens > 0 and out.stats.target_calls < NEW  # it did speculate


# ----------------------------------------------------------------------------- catch-up and trace
def test_catch_up_equals_fresh_forward(pair, prompts):
    target, _, _ = pair
    tokens = prompts[0][0].tolist()
    with torch.inference_mode():
        fresh = kv.forward(target, prompts[0], kv.new_cache(target), logits_to_keep=1)[0]  # [1, V]
        cache = kv.new_cache(target)
        kv.forward(target, prompts[0][:, :20], cache)
        logits, fed = catch_up(target, cache, tokens)  # 28 missed tokens in one forward
        assert fed == len(tokens) - 20 and kv.cache_length(cache) == len(tokens)
        torch.testing.assert_close(logits, fresh, atol=1e-4, rtol=1e-4)
        # the check can fail: a catch-up that skips the missed tokens is caught
        broken = kv.new_cache(target)
        kv.forward(target, prompts[0][:, :20], broken)
        bad = kv.forward(target, prompts[0][:, -1:], broken, logits_to_keep=1)[0]
        assert (bad - fresh).abs().max() > 1e-2


@pytest.mark.parametrize("speculate", [False, True])
def test_logits_after_switches_equal_fresh_forward(pair, prompts, speculate):
    target, draft, _ = pair
    models = {TARGET: target, DRAFT: draft}
    trace = []
    seq, stats = _switch(pair, prompts[1], trace, entropy_threshold=1.5, min_dwell=1,
                         speculate_when_large=speculate)
    assert stats.extra["switches"] >= 2, "threshold no longer produces switches on this prompt"
    assert stats.extra["catchups"] == stats.extra["switches"]
    assert len(trace) == NEW
    with torch.inference_mode():  # one cache-free forward per model over the whole text (causal: row i sees :i+1)
        fresh = {name: m(seq).logits[0].float() for name, m in models.items()}  # [len, V]
        for r in trace:
            torch.testing.assert_close(r.logits, fresh[r.model][r.position - 1], atol=1e-4, rtol=1e-4)
            assert int(seq[0, r.position]) == int(r.logits.argmax())  # greedy token of the generating model
            assert r.entropy == pytest.approx(float(kernels.entropy(r.logits[None])[0]), abs=1e-5)


def test_trace_follows_rule_window_and_dwell(pair, prompts):
    w, dwell, h_star = 3, 2, 1.5
    for ids in prompts:
        trace = []
        _, stats = _switch(pair, ids, trace, entropy_threshold=h_star, entropy_window=w, min_dwell=dwell)
        window, active, since, broken_differs = [], DRAFT, None, False
        for r in trace:
            vals = window[-(w - 1):] + [r.probe_entropy if r.switched else r.entropy]
            expected = sum(vals) / len(vals)
            assert r.mean == pytest.approx(expected, abs=1e-9)
            broken_differs |= abs(sum(vals) / w - r.mean) > 1e-6  # no warm-up: always divide by w
            want = wanted_model(expected, h_star)
            if r.switched:
                assert r.model == want != active and may_switch(since, dwell)
                active, since = r.model, 0
            else:
                assert r.model == active and (want == active or not may_switch(since, dwell))
            window.append(r.entropy)
            since = None if since is None else since + 1
        assert trace[0].mean == pytest.approx(trace[0].probe_entropy if trace[0].switched else trace[0].entropy)
        assert stats.extra["switches"] == sum(r.switched for r in trace)
        assert broken_differs  # the replay can fail: a window without warm-up gives other means


def test_stats_are_consistent(pair, prompts):
    trace = []
    _, stats = _switch(pair, prompts[0], trace, entropy_threshold=1.5, min_dwell=1)
    e = stats.extra
    assert e["tokens_by_target"] + e["tokens_by_draft"] == stats.new_tokens == NEW
    assert e["tokens_by_target"] == sum(r.model == TARGET for r in trace)
    assert e["large_fraction"] == e["tokens_by_target"] / NEW
    assert e["estimated_cost_ratio"] == pytest.approx(
        estimated_cost_ratio(e["large_fraction"], e["params_draft"], e["params_target"]))
    assert e["params_target"] > 8 * e["params_draft"]  # 20.8 M vs 2.5 M
    # one forward per position, plus the takeover forward at every switch
    assert stats.target_calls + stats.draft_calls == NEW + e["switches"]
    assert e["fed_tokens_target"] + e["fed_tokens_draft"] >= prompts[0].shape[1] + NEW - 1
    assert stats.lossy


def test_sampling_is_seeded_and_entropy_uses_real_vocabulary(pair, prompts):
    target, draft, _ = pair
    kw = dict(method="entropy_switch", entropy_threshold=2.0, max_new_tokens=8, temperature=0.8, eos_token_id=[])
    a = generate(target, prompts[0], draft=draft, seed=5, **kw).sequences
    b = generate(target, prompts[0], draft=draft, seed=5, **kw).sequences
    assert torch.equal(a, b)
    trace = []
    _switch(pair, prompts[0], trace, entropy_threshold=math.inf, vocab_size=4096)
    for r in trace:
        assert r.entropy == pytest.approx(float(kernels.entropy(r.logits[None, :4096])[0]), abs=1e-5)
        assert r.entropy != pytest.approx(float(kernels.entropy(r.logits[None])[0]), abs=1e-4)
