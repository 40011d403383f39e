"""Argument validation, statistics consistency and EOS handling of fastdecode.generate."""
import math

import pytest
import torch

import fastdecode
from tiny_models import tiny_llama


@pytest.fixture(scope="module")
def pair(tiny_pair):
    return tiny_pair


IDS = torch.tensor([[1, 2, 3]])


@pytest.mark.parametrize("kw,match", [
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-2), "top_k"),
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(method="beam"), "unknown method"),
    (dict(draft_length=0), "draft_length"),
    (dict(method="multi_draft", num_drafts=17), "num_drafts"),
    (dict(method="multi_draft", verifier="nope"), "verifier"),
    (dict(method="speculative", verifier="spectr"), "verifier"),
    (dict(seed=1, generator=torch.Generator()), "seed or generator"),
    (dict(method="speculative", num_drafts=4), "num_drafts"),
    (dict(draft_length=8, max_draft_length=2), "max_draft_length"),
    (dict(max_draft_length="8"), "max_draft_length"),
    (dict(adaptive_draft="no"), "adaptive_draft"),
    (dict(draft_length=True), "draft_length"),
    (dict(seed=1.7), "seed"),
    (dict(generator=0), "generator"),
    (dict(confidence_threshold="0.5"), "confidence_threshold"),
    (dict(eos_token_id=1.5), "eos_token_id"),
    (dict(method=3), "method"),
    (dict(lambda_attention={"window": 8}), "LambdaAttention"),
    (dict(lambda_attention=fastdecode.LambdaAttention(8, 1, max_rollback=3), draft_length=4, adaptive_draft=False),
     "max_rollback = 3 is below the longest draft \\(draft_length = 4\\)"),
    (dict(lambda_attention=fastdecode.LambdaAttention(8, 1, max_rollback=8)), "max_draft_length = 16"),
    # options that do not apply to the chosen method
    (dict(method="entropy_switch", verifier="rrs"), "verifier= applies to speculative and multi_draft"),
    (dict(method="autoregressive", draft_length=4), "draft_length applies to speculative and multi_draft"),
    (dict(method="autoregressive", confidence_threshold=0.5), "confidence_threshold applies"),
    (dict(method="entropy_switch", draft_length=8), "draft_length applies to entropy_switch only with speculate_when_large=True"),
    (dict(method="entropy_switch", draft_length=3, speculative_length=3, speculate_when_large=True), "not both"),
    (dict(method="entropy_switch", adaptive_draft=True), "adaptive_draft applies"),
    (dict(method="entropy_switch", num_drafts=2), "num_drafts=2 applies"),
    (dict(method="entropy_switch", speculative_length=3), "speculate_when_large=True"),
    (dict(method="entropy_switch", bogus=1), "bad entropy_switch option"),
    (dict(method="speculative", entropy_threshold=2.0), "unexpected arguments"),
    (dict(method="multi_draft", num_drafts=2, confidence_threshold=0.3), "confidence_threshold applies"),
    (dict(method="multi_draft", num_drafts=2, max_draft_length=8), "adaptive draft length"),
    (dict(method="speculative", adaptive_draft=False, confidence_threshold=0.3), "adaptive draft length"),
    (dict(confidence_threshold=1.0), "confidence_threshold"),
    (dict(confidence_threshold=float("nan")), "confidence_threshold"),
    (dict(confidence_threshold=True), "confidence_threshold"),
    (dict(max_draft_length=True), "max_draft_length"),
])
def test_bad_arguments_raise(pair, kw, match):
    target, draft = pair
    with pytest.raises(ValueError, match=match):
        fastdecode.generate(target, IDS, draft=draft, **kw)


def test_bad_input_ids(pair):
    target, draft = pair
    with pytest.raises(ValueError, match="pad_token_id"):  # batches need a pad id (tests/decoding/test_batched.py)
        fastdecode.generate(target, torch.tensor([[1, 2], [3, 4]]), draft=draft)
    with pytest.raises(ValueError, match="empty"):
        fastdecode.generate(target, torch.zeros(1, 0, dtype=torch.long), draft=draft)
    with pytest.raises(ValueError, match="shape"):
        fastdecode.generate(target, torch.tensor([1, 2, 3]), draft=draft)
    with pytest.raises(ValueError, match="integer"):
        fastdecode.generate(target, torch.tensor([[1.0, 2.0]]), draft=draft)


def test_models_without_weights_are_named():
    """A model on the meta device (built without its weights) is named (a draft there: by the device check)."""
    real = tiny_llama(1)
    empty = tiny_llama(1).to("meta")
    with pytest.raises(ValueError, match="the target's weights are on the meta device"):
        fastdecode.generate(empty, IDS, max_new_tokens=2)
    with pytest.raises(ValueError, match="target is on cpu but draft is on meta"):
        fastdecode.generate(real, IDS, draft=empty, method="speculative", max_new_tokens=2)


def test_mismatched_vocabularies(pair):
    target = pair[0]
    other = tiny_llama(3, vocab=7)
    with pytest.raises(ValueError, match="vocabularies differ"):
        fastdecode.generate(target, IDS, draft=other)


def test_tokenizer_mismatch_is_named(code_pair):
    from transformers import PreTrainedTokenizerFast
    target, draft, tok = code_pair
    other = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer)
    other.add_tokens(["<extra_token_for_test>"])
    with pytest.raises(ValueError, match="tokenizers differ"):
        fastdecode.check_pair(target, draft, tok, other)


def test_speculative_without_draft(pair):
    with pytest.raises(ValueError, match="needs a draft"):
        fastdecode.generate(pair[0], IDS, method="speculative")


@pytest.mark.parametrize("method,kw", [("speculative", {}), ("speculative", dict(adaptive_draft=False)),
                                        ("multi_draft", dict(num_drafts=3, verifier="rrs"))])
def test_stats_are_consistent(pair, method, kw):
    target, draft = pair
    out = fastdecode.generate(target, IDS, draft=draft, method=method, max_new_tokens=50, seed=3,
                              eos_token_id=[], **kw)
    s = out.stats
    assert s.new_tokens == 50 == out.sequences.shape[1] - IDS.shape[1]
    assert math.isclose(s.tokens_per_target_call, s.new_tokens / s.target_calls)
    assert sum(s.accepted_length_histogram) == s.steps == s.target_calls
    assert sum(n * c for n, c in enumerate(s.accepted_length_histogram)) == s.accepted_tokens
    assert s.acceptance_rate == s.accepted_tokens / s.drafted_tokens
    assert s.position_drafted[0] >= s.position_accepted[0] > 0
    # every step emits its accepted drafts plus exactly one residual or bonus token
    assert s.accepted_tokens + s.steps == s.new_tokens


def test_same_seed_same_output(pair):
    target, draft = pair
    a = fastdecode.generate(target, IDS, draft=draft, max_new_tokens=30, seed=7, eos_token_id=[])
    b = fastdecode.generate(target, IDS, draft=draft, max_new_tokens=30, seed=7, eos_token_id=[])
    g = torch.Generator().manual_seed(7)
    c = fastdecode.generate(target, IDS, draft=draft, max_new_tokens=30, generator=g, eos_token_id=[])
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.sequences, c.sequences)


def test_max_new_tokens_zero(pair):
    out = fastdecode.generate(pair[0], IDS, draft=pair[1], max_new_tokens=0)
    assert torch.equal(out.sequences, IDS) and out.stats.new_tokens == 0


@pytest.mark.parametrize("method,kw", [("autoregressive", {}), ("speculative", dict(draft_length=6)),
                                        ("multi_draft", dict(num_drafts=2, draft_length=6))])
def test_eos_inside_accepted_draft_stops_like_hf(code_pair, stdlib_prompts, method, kw):
    """Declare as EOS a token that greedy decoding emits mid-way through an accepted draft: generation
    must stop right after it, exactly where HF generate stops."""
    target, draft, _ = code_pair
    ids = torch.tensor([stdlib_prompts[0]])
    full = fastdecode.generate(target, ids, draft=draft, method="speculative", draft_length=6, temperature=0,
                               max_new_tokens=40, eos_token_id=[])
    gen = full.sequences[0, ids.shape[1]:].tolist()
    eos = next(t for i, t in enumerate(gen) if i >= 5 and t not in gen[:i])  # first occurrence mid-sequence
    ref = target.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=eos)
    out = fastdecode.generate(target, ids, draft=draft, method=method, temperature=0, max_new_tokens=40,
                              eos_token_id=eos, **kw)
    assert out.sequences[0, -1] == eos
    assert torch.equal(out.sequences, ref)


def test_auto_with_several_drafts_is_multi_draft(pair):
    target, draft = pair
    out = fastdecode.generate(target, IDS, draft=draft, num_drafts=3, max_new_tokens=4, seed=0)
    assert out.stats.method == "multi_draft" and out.stats.extra["num_drafts"] == 3


@pytest.mark.parametrize("eos", [torch.tensor(5), [torch.tensor(5)], torch.tensor([5, 4])])
def test_eos_token_id_as_tensor(pair, eos):
    target, draft = pair
    want = fastdecode.generate(target, IDS, draft=draft, temperature=0, max_new_tokens=12, eos_token_id=[5, 4] if
                               isinstance(eos, torch.Tensor) and eos.dim() else 5).sequences
    assert torch.equal(fastdecode.generate(target, IDS, draft=draft, temperature=0, max_new_tokens=12,
                                           eos_token_id=eos).sequences, want)


@pytest.mark.parametrize("method", ["autoregressive", "speculative", "multi_draft"])
def test_tiny_temperature_is_greedy_not_nan(pair, method):
    """logits / T overflows float32 for T <= 1e-38: the limit (greedy) is returned, never a NaN row."""
    target, draft = pair
    greedy = fastdecode.generate(target, IDS, draft=draft, method=method, temperature=0, max_new_tokens=10,
                                 eos_token_id=[]).sequences
    for t in (1e-38, 1e-45, 5e-324):
        out = fastdecode.generate(target, IDS, draft=draft, method=method, temperature=t, max_new_tokens=10,
                                  eos_token_id=[], seed=0)
        assert torch.equal(out.sequences, greedy), t


def test_nan_logits_are_an_error_not_token_zero(pair):
    target, draft = pair
    from fastdecode.kernels import probs

    x = torch.randn(2, 6)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or \\+inf logits"):
        probs(x, 1.0)
    x[1, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or \\+inf logits"):
        probs(x, 0.7, 3, 0.9)
    broken = tiny_llama(1)
    with torch.no_grad():
        broken.lm_head.weight[0, 0] = float("inf")  # logit of token 0 is +-inf or NaN
    with pytest.raises(ValueError, match="NaN or \\+inf logits"):
        fastdecode.generate(broken, IDS, draft=draft, max_new_tokens=5, seed=0)


def test_failed_static_call_keeps_no_cache_on_the_models(monkeypatch):
    """A static call whose draft cache cannot be allocated (a max_new_tokens too large for the memory) used to leave
    the target's cache, sized for that call, kept on the target: every later call fitting in it reused it and ran
    out of memory again. Now a failed call drops the runners it kept, and the next call runs normally."""
    from fastdecode.decoding import static_cache
    target, draft = tiny_llama(11), tiny_llama(12, scale=3.0)   # fresh models: no runner kept by other tests
    ids = torch.tensor([[1, 2, 3]])
    real_init = static_cache.StaticRunner.__init__

    def init(self, model, *args, **kwargs):
        if model is draft:
            raise torch.OutOfMemoryError("can't allocate memory")
        real_init(self, model, *args, **kwargs)
    monkeypatch.setattr(static_cache.StaticRunner, "__init__", init)
    with pytest.raises(torch.OutOfMemoryError):
        fastdecode.generate(target, ids, draft=draft, temperature=0, max_new_tokens=20, cache_implementation="static")
    assert not [k for m in (target, draft) for k in m.__dict__ if k.startswith("_fastdecode_static")]
    monkeypatch.setattr(static_cache.StaticRunner, "__init__", real_init)
    out = fastdecode.generate(target, ids, draft=draft, temperature=0, max_new_tokens=8, cache_implementation="static")
    assert torch.equal(out.sequences, target.generate(ids, do_sample=False, max_new_tokens=8))
    assert [k for k in target.__dict__ if k.startswith("_fastdecode_static")]   # a successful call keeps its runner


def test_a_static_cache_that_does_not_fit_says_why(monkeypatch):
    """The allocator's own error named no cause: the message says the static cache is allocated up front for
    max_new_tokens and what to do."""
    from fastdecode.decoding import static_cache
    target = tiny_llama(13)

    def init(self, *args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory")
    monkeypatch.setattr(static_cache.StaticRunner, "__init__", init)
    with pytest.raises(RuntimeError, match="allocates each model's cache for the whole generation up front .*"
                                           "fewer max_new_tokens.*can't allocate memory"):
        fastdecode.generate(target, torch.tensor([[1, 2, 3]]), max_new_tokens=10 ** 6, temperature=0,
                            cache_implementation="static")


def test_a_tokenizer_output_passed_whole():
    """``generate(target, tok(prompt, return_tensors="pt"))``, as HF users pass ``**inputs``: its input_ids and
    attention_mask (a left-padded batch included); a mask given twice, or no input_ids, is a ValueError."""
    from transformers import BatchEncoding
    target = tiny_llama(14)
    ids = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    kw = dict(temperature=0, max_new_tokens=5, pad_token_id=0, eos_token_id=[])
    ref = fastdecode.generate(target, ids, attention_mask=mask, **kw).sequences
    enc = BatchEncoding({"input_ids": ids, "attention_mask": mask})
    assert torch.equal(fastdecode.generate(target, enc, **kw).sequences, ref)
    assert torch.equal(fastdecode.generate(target, {"input_ids": ids[1:]}, **kw).sequences, ref[1:])
    with pytest.raises(ValueError, match="attention_mask given twice"):
        fastdecode.generate(target, enc, attention_mask=mask, **kw)
    with pytest.raises(ValueError, match="without an 'input_ids' entry"):
        fastdecode.generate(target, {"ids": ids}, **kw)
