"""Argument validation, statistics consistency and EOS handling of fastdecode.generate."""
import math

import pytest
import torch

import fastdecode
from conftest import tiny_llama


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
])
def test_bad_arguments_raise(pair, kw, match):
    target, draft = pair
    with pytest.raises(ValueError, match=match):
        fastdecode.generate(target, IDS, draft=draft, **kw)


def test_bad_input_ids(pair):
    target, draft = pair
    with pytest.raises(ValueError, match="batch size 1"):
        fastdecode.generate(target, torch.tensor([[1, 2], [3, 4]]), draft=draft)
    with pytest.raises(ValueError, match="empty"):
        fastdecode.generate(target, torch.zeros(1, 0, dtype=torch.long), draft=draft)
    with pytest.raises(ValueError, match="shape"):
        fastdecode.generate(target, torch.tensor([1, 2, 3]), draft=draft)
    with pytest.raises(ValueError, match="integer"):
        fastdecode.generate(target, torch.tensor([[1.0, 2.0]]), draft=draft)


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
    pytest.importorskip("fastdecode.verification.rrs")
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
