"""Fast-tier matrix: tiny random models of many transformers architectures (built from their config classes)
give HF ``generate``'s greedy output with every lossless method (and entropy switching with the large model
always active, which verifies drafts like speculative decoding), or are refused up front with a ValueError
that names the model type and the reason; the static engine too. Draft: the target's first layer (same architecture,
same vocabulary)."""
import functools

import pytest
import torch

import fastdecode
from tiny_models import draft_of, hf_greedy, tiny_lm

ARCHITECTURES = [
    "llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "mistral", "mixtral", "qwen2_moe", "qwen3_moe",
    "phi3", "gpt_neox", "opt", "falcon", "olmo", "olmo2", "olmo3", "starcoder2", "cohere", "cohere2", "glm",
    "granite", "granitemoe", "stablelm", "phi", "gptj", "gpt2", "mpt", "smollm3", "exaone4", "seed_oss", "bloom",
]
NO_TREE_MASK = {"bloom"}  # ALiBi attention: multi_draft refused, every other method works
PROMPT, NEW = 6, 12
OVERRIDES = {"mpt": dict(d_model=64, n_heads=4)}


@functools.lru_cache(maxsize=None)
def _case(model_type):
    target = tiny_lm(model_type, 2, seed=1, **OVERRIDES.get(model_type, {}))
    prompt = torch.randint(0, target.config.vocab_size, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    return target, draft_of(target), prompt, hf_greedy(target, prompt, NEW)


STATIC_REFUSED = {"bloom"}   # ALiBi: the static engine's forwards pass a 4D mask (refused up front)


@pytest.mark.parametrize("model_type", sorted(set(ARCHITECTURES) - STATIC_REFUSED))
def test_static_engine_equals_hf_greedy(model_type):
    """The static engine (plain forwards on preallocated slot caches, its own 4D masks) on every architecture."""
    target, draft, prompt, ref = _case(model_type)
    runs = [("autoregressive", None, {}), ("speculative", draft, dict(draft_length=3, adaptive_draft=False)),
            ("speculative", draft, dict(verifier="block")), ("prompt_lookup", None, {}),
            ("multi_draft", draft, dict(num_drafts=2, draft_length=3)),
            ("multi_draft", target, dict(num_drafts=2, draft_length=4)),
            ("entropy_switch", draft, dict(entropy_threshold=float("-inf"), speculate_when_large=True))]
    for method, d, kw in runs:
        out = fastdecode.generate(target, prompt, draft=d, method=method, temperature=0, max_new_tokens=NEW,
                                  cache_implementation="static", **kw)
        assert torch.equal(out.sequences, ref), f"{model_type}: static {method} {kw} differs from HF greedy"


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_every_method_equals_hf_greedy(model_type):
    target, draft, prompt, ref = _case(model_type)
    runs = [("autoregressive", None, {}), ("speculative", draft, dict(draft_length=3, adaptive_draft=False)),
            ("speculative", draft, dict(verifier="block")),
            ("multi_draft", draft, dict(num_drafts=2, draft_length=3)),
            ("multi_draft", target, dict(num_drafts=2, draft_length=4)),  # self-draft: whole paths accepted
            ("entropy_switch", draft, dict(entropy_threshold=float("-inf"), speculate_when_large=True))]
    for method, d, kw in runs:
        if method == "multi_draft" and model_type in NO_TREE_MASK:
            continue
        out = fastdecode.generate(target, prompt, draft=d, method=method, temperature=0, max_new_tokens=NEW, **kw)
        assert torch.equal(out.sequences, ref), f"{model_type}: {method} {kw} differs from HF greedy"


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_packed_products_equal_hf_greedy(model_type, monkeypatch):
    """The CPU's packed linear layers (kernels/cpu_linear.py) on every architecture: these tiny layers are below
    the size rule, so it is lowered to pack them all; plain and speculative decoding still equal HF greedy."""
    from fastdecode.kernels import cpu_linear

    if not cpu_linear.packing_available():
        pytest.skip("this torch build lacks oneDNN")
    monkeypatch.setattr(cpu_linear, "MIN_PACKED", 0)
    target, draft, prompt, ref = _case(model_type)
    for method, d in (("autoregressive", None), ("speculative", draft)):
        out = fastdecode.generate(target, prompt, draft=d, method=method, temperature=0, max_new_tokens=NEW,
                                  draft_length=None if d is None else 3)
        packed = cpu_linear.packable_layers(target)
        assert out.stats.extra.get("packed_linears", 0) >= len(packed) > 0, model_type
        assert torch.equal(out.sequences, ref), f"{model_type}: packed {method} differs from HF greedy"


@pytest.mark.parametrize("model_type,overrides", [("bloom", {}), ("falcon", dict(alibi=True))])
def test_alibi_models_refuse_multi_draft_up_front(model_type, overrides):
    target = tiny_lm(model_type, 1, seed=1, **overrides)
    prompt = torch.tensor([[1, 2, 3]])
    with pytest.raises(ValueError, match=f"multi_draft.*{model_type}.*ALiBi"):
        fastdecode.generate(target, prompt, draft=target, method="multi_draft", num_drafts=2, temperature=0,
                            max_new_tokens=4)
    ref = hf_greedy(target, prompt, 6)
    out = fastdecode.generate(target, prompt, draft=target, method="speculative", temperature=0, max_new_tokens=6)
    assert torch.equal(out.sequences, ref)
