"""Entropy switching on the static engine (``decoding/static_switch.py``): the same tokens, switches and
counters as the dynamic engine, greedy and seeded, with and without the target verifying drafts, on plain,
recorded (stand-in graphs) and ring runners; each model alone equals HF greedy; Lambda attention."""
import contextlib

import pytest
import torch

import fake_graphs
import fastdecode
from fastdecode import LambdaAttention
from fastdecode.config import EntropySwitchConfig, SamplingConfig
from fastdecode.decoding import DYNAMIC, STATIC
from fastdecode.decoding.stream import TokenStream
from fastdecode.stats import DecodeStats
from tiny_models import draft_of, hf_greedy, tiny_lm

NEW = 40
SAME = ("tokens_by_target", "tokens_by_draft", "switches", "catchups", "catchup_tokens", "fed_tokens_target",
        "fed_tokens_draft", "large_fraction")


@pytest.fixture(scope="module")
def pair():
    target = tiny_lm("llama", 2, seed=1, scale=10.0)   # peaked: entropies of 6-7.5 bits, switches both ways
    draft = draft_of(target)
    prompt = torch.randint(0, 512, (1, 9), generator=torch.Generator().manual_seed(0))
    return target, draft, prompt


def _run(engine, target, draft, prompt, temperature=0.0, seed=None, mode="eager", **opts):
    """Tokens, stats and trace of the decode function of ``engine``, as generate() calls it."""
    stream = TokenStream(prompt, NEW, set())
    stats, trace = DecodeStats(method="entropy_switch"), []
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    extra = dict(mode=mode) if engine == "static" else {}
    table = STATIC if engine == "static" else DYNAMIC
    from fastdecode.decoding.static_cache import compile_limits   # (generate enters it for compile=True)
    with torch.inference_mode(), compile_limits() if mode == "inductor" else contextlib.nullcontext():
        table["entropy_switch"](target, draft, stream, SamplingConfig(temperature), EntropySwitchConfig(**opts),
                                generator, stats, None, trace=trace, **extra)
    return stream.as_tensor("cpu"), stats, trace


@pytest.fixture(scope="module")
def threshold(pair):
    """The median entropy of the draft alone: both models generate at this threshold."""
    _, _, trace = _run("dynamic", *pair, entropy_threshold=float("inf"))
    return float(torch.tensor([r.entropy for r in trace]).median())


def _same(a, b):
    (ta, sa, tra), (tb, sb, trb) = a, b
    assert torch.equal(ta, tb)
    assert {k: sa.extra[k] for k in SAME} == {k: sb.extra[k] for k in SAME}
    assert [(r.model, r.switched, r.mean is None) for r in tra] == [(r.model, r.switched, r.mean is None) for r in trb]
    assert sa.accepted_tokens == sb.accepted_tokens and sa.drafted_tokens == sb.drafted_tokens


CASES = [dict(), dict(min_dwell=3), dict(start="target"), dict(speculate_when_large=True, draft_length=3),
         dict(speculate_when_large=True, draft_length=5, min_dwell=2, start="target")]


@pytest.mark.parametrize("opts", CASES, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("temperature,seed", [(0.0, None), (1.0, 5)])
def test_static_equals_dynamic(pair, threshold, opts, temperature, seed):
    ref = _run("dynamic", *pair, temperature, seed, entropy_threshold=threshold, **opts)
    assert ref[1].extra["switches"] >= 2 and ref[1].extra["tokens_by_target"] and ref[1].extra["tokens_by_draft"]
    _same(_run("static", *pair, temperature, seed, entropy_threshold=threshold, **opts), ref)


@pytest.mark.parametrize("opts", [CASES[0], CASES[3]], ids=["token", "speculate"])
@pytest.mark.parametrize("temperature,seed", [(0.0, None), (1.0, 5)])
def test_recorded_forwards_equal_dynamic(pair, threshold, opts, temperature, seed, monkeypatch):
    """Recorded forwards (the CPU stand-in for CUDA graphs): catch-ups in bucket-padded pieces, the draft chain
    and the verification recorded whole; the same tokens and counters."""
    records = fake_graphs.install(monkeypatch, frozen=bool(opts))   # (the chain step's on traced replays)
    for m in pair[:2]:
        m.__dict__.pop("_fastdecode_static", None)
    ref = _run("dynamic", *pair, temperature, seed, entropy_threshold=threshold, **opts)
    _same(_run("static", *pair, temperature, seed, mode="cudagraphs", entropy_threshold=threshold, **opts), ref)
    assert records
    if opts:
        assert any(key[0] == "draft_chain" for _, key in records)
    else:   # a model that takes over catches up in pieces of several tokens, not one forward per token
        assert any(key[0] == "chain" and key[1][1] > 1 for _, key in records)
    for m in pair[:2]:
        m.__dict__.pop("_fastdecode_static", None)


@pytest.mark.parametrize("threshold_value,model", [(float("inf"), "draft"), (float("-inf"), "target")])
@pytest.mark.parametrize("speculate", [False, True])
def test_one_model_alone_equals_hf_greedy(pair, threshold_value, model, speculate):
    target, draft, prompt = pair
    alone = target if model == "target" else draft
    out = fastdecode.generate(target, prompt, draft=draft, method="entropy_switch", temperature=0,
                              max_new_tokens=NEW, eos_token_id=[], cache_implementation="static",
                              entropy_threshold=threshold_value, speculate_when_large=speculate)
    assert torch.equal(out.sequences, hf_greedy(alone, prompt, NEW))
    assert out.stats.lossy and out.stats.extra[f"tokens_by_{model}"] == NEW


def test_a_model_never_picked_is_never_run(pair):
    target, draft, prompt = pair
    _, stats, _ = _run("static", target, draft, prompt, entropy_threshold=float("inf"))
    assert stats.target_calls == 0 and stats.extra["fed_tokens_target"] == 0


def test_windowed_model_with_rings(monkeypatch):
    """A windowed model whose static layers keep rings (the prefill piece shrunk): long catch-ups go in pieces
    the ring takes; the same tokens as the dynamic engine."""
    from end_to_end.test_sliding_window import CONFIGS
    from fastdecode.decoding import static_windows
    monkeypatch.setattr(static_windows, "PREFILL_PIECE", 4)
    target = tiny_lm("mistral", 2, seed=1, scale=10.0, **CONFIGS["mistral"])
    draft = draft_of(target)
    prompt = torch.randint(0, 512, (1, 9), generator=torch.Generator().manual_seed(0))
    _, _, trace = _run("dynamic", target, draft, prompt, entropy_threshold=float("inf"))
    h = float(torch.tensor([r.entropy for r in trace]).median())
    for opts in CASES[:1] + CASES[3:4]:
        ref = _run("dynamic", target, draft, prompt, entropy_threshold=h, min_dwell=8, **opts)
        assert ref[1].extra["catchup_tokens"] > 8   # catch-ups longer than the ring takes at once
        _same(_run("static", target, draft, prompt, entropy_threshold=h, min_dwell=8, **opts), ref)
        assert target.__dict__["_fastdecode_static"].ring is not None


def test_lambda_attention_equals_dynamic(pair, threshold):
    target, draft, prompt = pair
    args = dict(draft=draft, method="entropy_switch", temperature=0, max_new_tokens=NEW, eos_token_id=[],
                entropy_threshold=threshold, speculate_when_large=True, draft_length=3,
                lambda_attention=LambdaAttention(window=16, num_global=2))
    ref = fastdecode.generate(target, prompt, **args)
    out = fastdecode.generate(target, prompt, cache_implementation="static", **args)
    assert torch.equal(out.sequences, ref.sequences) and out.stats.extra["switches"] == ref.stats.extra["switches"]


def test_every_method_has_a_static_path():
    from fastdecode.config import METHODS
    assert set(STATIC) == set(DYNAMIC) == set(METHODS)


@pytest.mark.parametrize("temperature,seed", [(0.0, None), (1.0, 2)])
def test_code_pair_static_equals_dynamic(code_pair, temperature, seed):
    """The real pair (slow tier), the default threshold, with and without the target verifying drafts."""
    from prompts import stdlib_prompts
    target, draft, tok = code_pair
    ids = torch.tensor([stdlib_prompts(tok, n=1, prompt_tokens=48, seed=3)[0]])
    for opts in (dict(), dict(speculate_when_large=True)):
        kw = dict(draft=draft, method="entropy_switch", temperature=temperature, seed=seed, max_new_tokens=48,
                  eos_token_id=[], **opts)
        ref = fastdecode.generate(target, ids, **kw)
        out = fastdecode.generate(target, ids, cache_implementation="static", **kw)
        assert ref.stats.extra["switches"] >= 1
        assert torch.equal(out.sequences, ref.sequences)
        assert {k: out.stats.extra[k] for k in SAME} == {k: ref.stats.extra[k] for k in SAME}


@pytest.mark.slow
def test_compiled_equals_dynamic(pair, threshold):
    """compile=True (inductor on the CPU): catch-ups in bucket-padded pieces through the compiled forwards."""
    ref = _run("dynamic", *pair, entropy_threshold=threshold, speculate_when_large=True, draft_length=3)
    for m in pair[:2]:
        m.__dict__.pop("_fastdecode_static", None)
    try:
        _same(_run("static", *pair, mode="inductor", entropy_threshold=threshold, speculate_when_large=True,
                   draft_length=3), ref)
    finally:
        for m in pair[:2]:
            m.__dict__.pop("_fastdecode_static", None)


@pytest.mark.parametrize("prompt_len,new", [(1, 6), (5, 0)])
def test_one_token_prompt_and_nothing_to_generate(pair, prompt_len, new):
    target, draft, prompt = pair
    kw = dict(draft=draft, method="entropy_switch", temperature=0, max_new_tokens=new, eos_token_id=[],
              entropy_threshold=float("-inf"))
    ref = fastdecode.generate(target, prompt[:, :prompt_len], **kw)
    out = fastdecode.generate(target, prompt[:, :prompt_len], cache_implementation="static", **kw)
    assert torch.equal(out.sequences, ref.sequences) and out.stats.extra.keys() == ref.stats.extra.keys()
    assert out.stats.target_calls == ref.stats.target_calls
