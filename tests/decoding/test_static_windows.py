"""Models with their own sliding window (Mistral, Phi-3, Gemma-2/3, Qwen2, ...) on the static engine: the window
applied by position in the engine's masks. Greedy output equals HF ``generate`` past the window for every static
method, single rows and batches, plain and recorded forwards; without the window the same runs give other
tokens (so these tests see a missing window); sampling keeps the target's law past a window of 2."""
import pytest
import torch

import fastdecode
from fastdecode import LambdaAttention
from fastdecode.decoding import hf_cache as kv
from fastdecode.decoding import static_cache
import fake_graphs
from batches import left_pad
from end_to_end.test_sliding_window import CONFIGS, NEW, PROMPT, WINDOW
from tiny_models import draft_of, hf_greedy, tiny_lm

METHODS = [
    ("autoregressive", {}),
    ("speculative", dict(draft_length=3, adaptive_draft=False)),
    ("speculative", dict(verifier="block", fallback="off")),
    ("prompt_lookup", dict(fallback="off")),
    ("multi_draft", dict(num_drafts=2, draft_length=3)),
    ("multi_draft", dict(num_drafts=3, adaptive_draft=True)),
    ("entropy_switch", dict(entropy_threshold=float("-inf"), speculate_when_large=True)),   # the target verifying
]


def _case(model_type, **extra):
    target = tiny_lm(model_type, 2, seed=1, **{**CONFIGS[model_type], **extra})
    prompt = torch.randint(0, target.config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    prompt[0, 6:] = prompt[0, :6]   # something for prompt lookup to copy
    return target, draft_of(target), prompt, hf_greedy(target, prompt, NEW)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request):
    return _case(request.param)


def _static(target, prompt, method, kw, draft, **extra):
    return fastdecode.generate(target, prompt, draft=draft if method in ("speculative", "multi_draft", "entropy_switch") else None,
                               method=method, temperature=0, max_new_tokens=NEW, eos_token_id=[],
                               cache_implementation="static", **kw, **extra)


@pytest.mark.parametrize("method,kw", METHODS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(METHODS)])
def test_greedy_equals_hf_past_the_window(case, method, kw):
    target, draft, prompt, ref = case
    assert kv.attention_layout(target)[0] == WINDOW
    for d in ((draft, target) if method == "multi_draft" else (draft,)):   # self-draft: long accepted paths
        out = _static(target, prompt, method, kw, d)
        assert torch.equal(out.sequences, ref), f"{method} {kw}"


def test_refuses_other_layer_kinds():
    target = tiny_lm("gemma2", 2, seed=1, sliding_window=WINDOW)
    target.config.layer_types = ["sliding_attention", "chunked_attention"]
    with pytest.raises(ValueError, match=r"layers of type \['chunked_attention'\].*cache_implementation='dynamic'"):
        fastdecode.generate(target, torch.tensor([[1, 2, 3]]), cache_implementation="static")


@pytest.mark.parametrize("model_type", ["mistral", "gemma2"])
def test_without_the_window_the_tokens_differ(model_type, monkeypatch):
    """The tests here would see a missing window: with the window left out of the static masks, the same runs
    (one mask for every layer, and one per layer type) give other tokens."""
    target, draft, prompt, ref = _case(model_type)
    assert torch.equal(_static(target, prompt, "speculative", {}, draft).sequences, ref)
    monkeypatch.setattr(static_cache.kv, "attention_layout", lambda model: (None, None))
    for m in (target, draft):
        m.__dict__.pop("_fastdecode_static", None)
    assert not torch.equal(_static(target, prompt, "speculative", {}, draft).sequences, ref)


# ------------------------------------------------------------------------------------------------- batches
SW_MODELS = {"mistral": dict(sliding_window=4),                                     # every layer windowed
             "qwen2": dict(sliding_window=4, use_sliding_window=True, max_window_layers=1),   # full, then windowed
             "gemma2": dict(sliding_window=4)}                                      # alternating
BATCH_METHODS = [("autoregressive", {}), ("speculative", dict(adaptive_draft=False, draft_length=3)),
                 ("speculative", dict(verifier="block", fallback="off")), ("prompt_lookup", dict(fallback="off")),
                 ("multi_draft", dict(num_drafts=2, draft_length=3))]


@pytest.fixture(scope="module", params=sorted(SW_MODELS))
def windowed(request):
    target = tiny_lm(request.param, layers=2, seed=0, **SW_MODELS[request.param])
    prompts = [[7, 8, 9, 7, 8], [30, 31, 32, 33, 34, 35, 36, 37, 38], [50, 51, 52]]
    ids, mask = left_pad(prompts)
    hf = target.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    return target, draft_of(target, 1), ids, mask, hf


def _batch(windowed, method, kw, **extra):
    target, draft, ids, mask, _ = windowed
    return fastdecode.generate(target, ids, attention_mask=mask, pad_token_id=0, **{**kw, **extra},
                               draft=draft if method in ("speculative", "multi_draft") else None, method=method,
                               max_new_tokens=NEW, temperature=0, eos_token_id=[], cache_implementation="static")


@pytest.mark.parametrize("method,kw", BATCH_METHODS)
def test_batch_greedy_equals_hf(windowed, method, kw):
    """Rejected drafts leave invalid columns inside rows: the window must count positions, not columns."""
    out = _batch(windowed, method, kw)
    assert torch.equal(out.sequences, windowed[-1])
    if method != "autoregressive":
        assert out.stats.drafted_tokens > out.stats.accepted_tokens > 0   # accepted and rejected drafts


@pytest.mark.parametrize("method,kw", [BATCH_METHODS[1], BATCH_METHODS[4]])
def test_batch_recorded_path_greedy_equals_hf(windowed, method, kw, fake_cudagraphs):
    """The recorded batch forwards (CPU stand-in for CUDA graphs): key positions are one more recorded input."""
    target, draft = windowed[:2]
    for m in (target, draft):
        for k in [k for k in m.__dict__ if k.startswith("_fastdecode_static")]:
            del m.__dict__[k]
    out = _batch(windowed, method, kw, compile="cudagraphs")
    assert torch.equal(out.sequences, windowed[-1])
    assert any(len(key) == 5 for _, key in fake_cudagraphs)   # the target's: ids, pos, visible, kpos


@pytest.fixture
def fake_cudagraphs(monkeypatch):
    return fake_graphs.install(monkeypatch)


# ------------------------------------------------------------------------------------------------- the rest
def test_single_row_recorded_path(monkeypatch):
    """Single rows through the recording path (CPU stand-in): the key positions live in the cache (written
    inside the recorded function), chain and tree forwards alike."""
    records = fake_graphs.install(monkeypatch)
    target, draft, prompt, ref = _case("gemma2")
    for method, kw in (("speculative", dict(fallback="off")), ("multi_draft", dict(num_drafts=2, draft_length=3))):
        assert torch.equal(_static(target, prompt, method, kw, draft, compile="cudagraphs").sequences, ref)
    assert {key[0] for _, key in records} == {"chain", "tree"}


@pytest.mark.slow
def test_inductor():
    """compile=True (inductor on the CPU) with a dict of masks (windowed and full layers)."""
    target, draft, prompt, ref = _case("gemma2")
    out = _static(target, prompt, "speculative", dict(adaptive_draft=False, draft_length=3), draft, compile=True)
    assert torch.equal(out.sequences, ref)


def test_lambda_replaces_a_larger_model_window():
    """Under Lambda attention the model's own (larger) window is Lambda's business, as on the dynamic engine:
    both engines give the same tokens well past Lambda's window."""
    target = tiny_lm("mistral", 2, seed=1, sliding_window=24)
    draft = draft_of(target)
    prompt = torch.randint(0, target.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(0))
    kw = dict(temperature=0, max_new_tokens=30, eos_token_id=[], lambda_attention=LambdaAttention(window=8,
                                                                                                  num_global=2))
    for method, d in (("autoregressive", None), ("speculative", draft)):
        dyn = fastdecode.generate(target, prompt, draft=d, method=method, **kw)
        sta = fastdecode.generate(target, prompt, draft=d, method=method, cache_implementation="static", **kw)
        assert torch.equal(sta.sequences, dyn.sequences), method


@pytest.mark.parametrize("method,kw", [("multi_draft", dict(num_drafts=2, draft_length=2)),
                                       ("speculative", dict(draft_length=2, adaptive_draft=False))])
def test_sampled_two_token_law_past_the_window(method, kw):
    """Sampling stays lossless past a window of 2 (prompt of 4) on the static engine: the exact law of the first
    two tokens by enumeration with full forwards (the model's own windowed mask) against LAW_RUNS seeded runs."""
    from distribution import LAW_RUNS, chi_square_pvalue, exact_law, sample_law

    target = tiny_lm("mistral", 2, seed=1, vocab_size=6, sliding_window=2)
    prompt = [1, 2, 3, 4]
    counts = sample_law(target, draft_of(target), prompt, 2, LAW_RUNS, max_new_tokens=3, temperature=1.0, method=method,
                        cache_implementation="static", **kw)
    assert chi_square_pvalue(counts, exact_law(target, prompt, 2)) > 1e-3


def test_window_of_one_equals_full_forwards():
    """A window of 1 (each token sees itself alone): both engines equal greedy decoding by full forwards without
    a cache (the model's own masks). transformers' cached ``generate`` differs from that reference here (its
    windowed cache layers mishandle a window of 1), so HF is not the reference for this case."""
    target = tiny_lm("mixtral", 1, seed=671, sliding_window=1)
    prompt = torch.tensor([[323, 70, 60, 277, 348, 248, 376, 435]])
    seq = prompt
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, target(seq, use_cache=False).logits[:, -1:].argmax(-1)], 1)
    for method, d in (("autoregressive", None), ("speculative", draft_of(target))):
        for engine in ("dynamic", "static"):
            out = fastdecode.generate(target, prompt, draft=d, method=method, temperature=0, max_new_tokens=6,
                                      eos_token_id=[], cache_implementation=engine)
            assert torch.equal(out.sequences, seq), (method, engine)


def test_gemma3_multimodal_wrapper():
    """Gemma-3 as its checkpoints load (``Gemma3ForConditionalGeneration``: a text model with windowed and full
    layers inside a vision-language wrapper), text only: both engines give HF's greedy tokens past the window."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    torch.manual_seed(0)
    cfg = Gemma3Config(text_config=dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=WINDOW,
                                        layer_types=["sliding_attention", "full_attention"]),
                       vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, image_size=32, patch_size=16), mm_tokens_per_image=4)
    model = Gemma3ForConditionalGeneration(cfg).eval()
    prompt = torch.randint(0, 500, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    ref = model.generate(prompt, max_new_tokens=NEW, do_sample=False)
    for engine in ("dynamic", "static"):
        for method in ("autoregressive", "speculative", "multi_draft"):   # (self-drafts)
            out = fastdecode.generate(model, prompt, draft=None if method == "autoregressive" else model, method=method,
                                      temperature=0, max_new_tokens=NEW, eos_token_id=[], cache_implementation=engine)
            assert torch.equal(out.sequences, ref), (engine, method)
