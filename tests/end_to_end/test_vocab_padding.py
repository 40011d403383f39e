"""Pairs whose output sizes differ by vocabulary padding (Qwen2.5-0.5B: 151936 rows, 7B: 152064) with one
tokenizer: the draft is brought to the target's size (-inf padding or cut), the target is never touched,
so greedy output is HF's and sampling keeps the target's law."""
import pytest
import torch

import fastdecode
from distribution import LAW_RUNS, chi_square_pvalue, exact_law, sample_law
from fastdecode.decoding.hf_cache import fit_width
from tiny_models import hf_greedy, tiny_llama, tiny_lm

NEW = 16


def _pair(v_target: int, v_draft: int):
    """Target (2 layers) and a 1-layer draft sharing its first rows; the extra rows of the wider model are
    scaled up so that its argmax often lands on an id the other model lacks."""
    target = tiny_lm("llama", 2, seed=1, vocab_size=v_target)
    draft = tiny_lm("llama", 1, seed=2, vocab_size=v_draft)
    n = min(v_target, v_draft)
    with torch.no_grad():
        draft.model.embed_tokens.weight[:n] = target.model.embed_tokens.weight[:n]
        draft.lm_head.weight[:n] = target.lm_head.weight[:n]
        wider = target if v_target > v_draft else draft
        wider.lm_head.weight[n:] *= 3.0
    return target, draft


@pytest.mark.parametrize("engine", ["dynamic", "static"])
@pytest.mark.parametrize("v_target,v_draft", [(512, 520), (520, 512)])
def test_greedy_equals_hf_when_sizes_differ(v_target, v_draft, engine):
    target, draft = _pair(v_target, v_draft)
    prompt = torch.randint(0, 512, (1, 8), generator=torch.Generator().manual_seed(0))
    ref = hf_greedy(target, prompt, NEW)
    if v_target > v_draft:
        assert (ref[0, 8:] >= v_draft).any(), "the target should emit ids the draft lacks (test power)"
    runs = [("speculative", {}), ("speculative", dict(verifier="block")), ("prompt_lookup", {}),
            ("multi_draft", dict(num_drafts=3, draft_length=3))]
    if engine == "dynamic":
        runs.append(("entropy_switch", dict(entropy_threshold=float("-inf"), speculate_when_large=True)))
    for method, kw in runs:
        out = fastdecode.generate(target, prompt, draft=draft, method=method, temperature=0, max_new_tokens=NEW,
                                  cache_implementation=engine, **kw)
        assert torch.equal(out.sequences, ref), f"{engine} {method} {kw} with vocab {v_target} / {v_draft}"


@pytest.mark.parametrize("v_target,v_draft", [(512, 520), (520, 512)])
def test_sampling_stays_in_range(v_target, v_draft):
    target, draft = _pair(v_target, v_draft)
    prompt = torch.tensor([[1, 2, 3]])
    for method, kw in [("speculative", {}), ("multi_draft", dict(num_drafts=3)),
                       ("entropy_switch", dict(entropy_threshold=2.0, speculate_when_large=True))]:
        out = fastdecode.generate(target, prompt, draft=draft, method=method, max_new_tokens=NEW, seed=0, top_k=50,
                                  **kw)
        assert int(out.sequences.max()) < v_target


@pytest.mark.parametrize("v_draft,method,kw", [(5, "speculative", dict(draft_length=2, adaptive_draft=False)),
                                              (8, "multi_draft", dict(num_drafts=2, draft_length=2))])
def test_two_token_law_is_the_target_s(v_draft, method, kw, monkeypatch):
    """Exact law of the first two tokens (enumeration) against LAW_RUNS seeded generations, V_target = 6: a
    narrower draft (padded) and a wider one (cut). Sizes this far apart are refused as different tokenizers
    by default, so the test lifts that guard."""
    monkeypatch.setattr(fastdecode.models, "MAX_PADDING_FRACTION", 1.0)
    target, draft = tiny_llama(1, vocab=6), tiny_llama(2, vocab=v_draft, scale=3.0)
    prompt = [1, 2, 3, 4]
    counts = sample_law(target, draft, prompt, 2, LAW_RUNS, max_new_tokens=3, temperature=1.0, method=method, **kw)
    assert chi_square_pvalue(counts, exact_law(target, prompt, 2)) > 1e-3


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.9), (0.0, 0, 1.0)])
def test_probs_and_entropy_ignore_minus_inf_padding(temperature, top_k, top_p):
    """The reference and the Triton kernels (interpreted on the CPU) give padded columns probability 0 and
    leave the rest, and the entropy, as without the padding."""
    from interpret import kernel_module
    from fastdecode import kernels

    logits = torch.randn(3, 100, generator=torch.Generator().manual_seed(0)) * 3
    padded = fit_width(logits, 108)
    impls = [(kernels.probs_reference, kernels.entropy)]
    try:
        impls.append((kernel_module("probs").probs,
                      kernel_module("entropy").entropy))
    except ImportError:
        pass
    for probs, entropy in impls:
        p, pp = probs(logits, temperature, top_k, top_p), probs(padded, temperature, top_k, top_p)
        assert torch.isfinite(pp).all() and (pp[:, 100:] == 0).all()
        torch.testing.assert_close(pp[:, :100], p, atol=1e-6, rtol=1e-5)
        h, hp = entropy(logits), entropy(padded)
        assert torch.isfinite(hp).all()
        torch.testing.assert_close(hp, h, atol=1e-5, rtol=1e-5)
