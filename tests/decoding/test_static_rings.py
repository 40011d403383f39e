"""Windowed layers in rings on the static engine (``decoding.static_windows``): memory O(window) per windowed
layer. The prefill piece is shrunk here (4 tokens) so that a ring (window 8 + 8 slots) is far smaller than the
capacity and wraps many times in a short text: greedy output still equals HF ``generate`` for every static
method and architecture of the window tests, with plain, recorded (stand-in graphs) and compiled forwards,
single-draft and tree steps, self-drafts; seeded samples equal the dynamic engine's; the windowed layers
hold R slots and the full ones the capacity; without a ring (short generations) nothing changes."""
import pytest
import torch

import fake_graphs
import fastdecode
from end_to_end.test_sliding_window import CONFIGS, WINDOW
from fastdecode.decoding import static_windows
from fastdecode.decoding.static_windows import WindowRingLayer
from tiny_models import draft_of, hf_greedy, tiny_lm

PROMPT, NEW, PIECE = 13, 60, 4
METHODS = [
    ("autoregressive", {}),
    ("speculative", dict(draft_length=3, adaptive_draft=False)),
    ("speculative", dict(fallback="off", confidence_threshold=0.0)),
    ("speculative", dict(verifier="block", fallback="off")),
    ("prompt_lookup", dict(fallback="off")),
    ("multi_draft", dict(num_drafts=2, draft_length=3)),
    ("entropy_switch", dict(entropy_threshold=float("-inf"), speculate_when_large=True)),   # the target verifying
    ("multi_draft", dict(num_drafts=3, adaptive_draft=True)),   # (last: its runner, span 64, serves the later ones)
]


@pytest.fixture(autouse=True)
def small_piece(monkeypatch):
    monkeypatch.setattr(static_windows, "PREFILL_PIECE", PIECE)


def _case(model_type):
    target = tiny_lm(model_type, 2, seed=1, **CONFIGS[model_type])
    prompt = torch.randint(0, target.config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    prompt[0, 6:12] = prompt[0, :6]   # something for prompt lookup to copy
    return target, draft_of(target), prompt, hf_greedy(target, prompt, NEW)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request):
    return _case(request.param)


def _run(target, prompt, method, kw, draft, **extra):
    out = fastdecode.generate(target, prompt, draft=draft if method in ("speculative", "multi_draft", "entropy_switch") else None,
                              method=method, temperature=0, max_new_tokens=NEW, eos_token_id=[],
                              cache_implementation="static", **kw, **extra)
    return out.sequences


def _rings(model) -> list[int]:
    run = model.__dict__["_fastdecode_static"]
    return [layer.keys.shape[2] for layer in run.cache.layers if isinstance(layer, WindowRingLayer)]


@pytest.mark.parametrize("method,kw", METHODS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(METHODS)])
def test_greedy_equals_hf_with_rings(case, method, kw):
    target, draft, prompt, ref = case
    for d in ((draft, target) if method == "multi_draft" else (draft,)):   # self-draft: long accepted paths
        assert torch.equal(_run(target, prompt, method, kw, d), ref), f"{method} {kw}"
        run = target.__dict__["_fastdecode_static"]
        assert run.ring is not None and run.ring < run.capacity and set(_rings(target)) == {run.ring}
        if method != "multi_draft" or not kw.get("adaptive_draft"):   # (an adaptive tree's span is 64 slots)
            assert run.ring < PROMPT + NEW - WINDOW   # the ring wrapped


@pytest.mark.parametrize("model_type", ["mistral", "gemma2", "gemma3_text"])
@pytest.mark.parametrize("method,kw", [METHODS[0], METHODS[2], METHODS[5]], ids=["ar", "spec", "tree"])
def test_recorded_forwards_with_rings(monkeypatch, model_type, method, kw):
    """Recorded forwards (stand-in graphs, which refuse host reads) replay the ring masks and writes: the
    recorded speculative step and the tree forwards included."""
    fake_graphs.install(monkeypatch, frozen=model_type == "gemma2")   # (one of them on traced replays)
    target, draft, prompt, ref = _case(model_type)
    assert torch.equal(_run(target, prompt, method, kw, draft, compile="cudagraphs"), ref)


def test_full_layers_keep_the_capacity_and_windowed_layers_a_ring():
    target, draft, prompt, ref = _case("gemma2")   # alternating windowed and full layers
    _run(target, prompt, "speculative", dict(draft_length=3, adaptive_draft=False), draft)
    run = target.__dict__["_fastdecode_static"]
    sizes = [layer.keys.shape[2] for layer in run.cache.layers]
    assert sizes == [run.ring if w else run.capacity for w in static_windows.windowed_layers(target, len(sizes))]
    assert run.ring == WINDOW + max(4, PIECE) and run.ring < run.capacity   # (gamma = 3: forwards of 4)


def test_long_catch_up_in_pieces():
    """A draft that lacks more committed tokens than the ring takes in one forward (R - window: after many
    n-gram or plain steps) catches up in pieces: its drafts equal a full-capacity runner's. (One eager forward
    of them all overwrote ring slots its own first queries still needed: other drafts, silently.)"""
    from fastdecode.config import SamplingConfig
    from fastdecode.decoding import static
    from fastdecode.decoding.static_cache import StaticRunner
    from fastdecode.stats import DecodeStats
    target, draft, prompt, _ = _case("mistral")
    L, behind = 60, 40
    seq = torch.zeros(128, dtype=torch.long)
    seq[:L] = torch.randint(0, 512, (L,), generator=torch.Generator().manual_seed(1))
    drafts = []
    for span in (None, 4):   # the full layout, then a ring of window + 4 slots
        run = StaticRunner(draft, 128, "eager", span=span)
        assert (run.ring is None) == (span is None)
        with torch.inference_mode():
            run.prefill(seq[None, : L - 1 - behind])
            x, _, dlen = static._draft(run, seq, torch.zeros_like(seq), seq[L - 1 : L], L, L - 1 - behind, 3,
                                       SamplingConfig(0.0), None, DecodeStats(), 0.0, 4)
        assert dlen == L - 1
        drafts.append(x)
    assert run.max_forward == run.ring - WINDOW < behind
    assert torch.equal(drafts[0], drafts[1])
    with pytest.raises(RuntimeError, match="takes at most"):
        run.forward(seq[None, :behind], 0)


def test_no_ring_when_it_would_not_save_memory(monkeypatch):
    """The default prefill piece (512) makes the ring larger than a short generation's capacity: the full
    layout, unchanged."""
    monkeypatch.setattr(static_windows, "PREFILL_PIECE", 512)
    target, draft, prompt, ref = _case("mistral")
    assert torch.equal(_run(target, prompt, "speculative", dict(draft_length=3, adaptive_draft=False), draft), ref)
    assert target.__dict__["_fastdecode_static"].ring is None and not _rings(target)


@pytest.mark.parametrize("model_type", ["mistral", "gemma3_text"])
def test_seeded_samples_equal_the_dynamic_engine(model_type):
    target, draft, prompt, _ = _case(model_type)
    for kw in (dict(method="autoregressive"), dict(method="speculative", draft=draft, draft_length=3,
                                                   adaptive_draft=False)):
        args = dict(temperature=1.0, max_new_tokens=40, seed=3, eos_token_id=[], **kw)
        ref = fastdecode.generate(target, prompt, **args).sequences
        assert torch.equal(fastdecode.generate(target, prompt, cache_implementation="static", **args).sequences, ref)


def test_a_reused_runner_starts_clean():
    """A second call (shorter prompt) on the kept ring runner sees none of the first call's keys."""
    target, draft, prompt, ref = _case("mistral")
    _run(target, prompt, "autoregressive", {}, None)
    short = prompt[:, :5]
    assert torch.equal(_run(target, short, "autoregressive", {}, None), hf_greedy(target, short, NEW))


@pytest.mark.slow
def test_compiled_with_rings():
    target, draft, prompt, ref = _case("gemma2")
    out = _run(target, prompt, "speculative", dict(draft_length=3, adaptive_draft=False), draft, compile=True)
    assert torch.equal(out, ref)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["mistral", "gemma3_text"])
def test_default_piece_long_prompt(monkeypatch, model_type):
    """At the real prefill piece (512): a 700-token prompt prefilled in two pieces, 300 new tokens through a
    ring of 64 + 512 slots (the capacity is 1024): greedy = HF for plain, speculative and tree steps."""
    monkeypatch.setattr(static_windows, "PREFILL_PIECE", 512)
    extra = dict(layer_types=["sliding_attention", "full_attention"]) if model_type == "gemma3_text" else {}
    target = tiny_lm(model_type, 2, seed=1, sliding_window=64, max_position_embeddings=4096, **extra)
    draft = draft_of(target)
    prompt = torch.randint(0, target.config.vocab_size, (1, 700), generator=torch.Generator().manual_seed(0))
    ref = target.generate(prompt, max_new_tokens=300, do_sample=False)
    for method, kw in (("autoregressive", {}), ("speculative", dict(draft_length=4, adaptive_draft=False)),
                       ("multi_draft", dict(num_drafts=2, draft_length=3))):
        out = fastdecode.generate(target, prompt, draft=None if method == "autoregressive" else draft, method=method,
                                  temperature=0, max_new_tokens=300, eos_token_id=[], cache_implementation="static",
                                  **kw)
        assert torch.equal(out.sequences, ref), method
        assert target.__dict__["_fastdecode_static"].ring == 576
