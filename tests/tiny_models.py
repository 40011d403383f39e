"""Tiny random causal LMs of many transformers architectures, built from their config classes (no download).

``tiny_lm(model_type, layers, seed, **overrides)`` gives an eval-mode float32 model with hidden size 64,
4 heads, a vocabulary of 512 and no special tokens (so that greedy generation never stops early and
HF ``generate`` is a clean reference). Output embeddings are scaled up so that next-token
distributions are peaked: greedy ties between near-equal logits would make equality tests flaky.
"""
from __future__ import annotations

import torch

VOCAB = 512

BASE = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=256, bos_token_id=None, eos_token_id=None, pad_token_id=None,
            tie_word_embeddings=False)

# per-architecture fixes to the shared settings (names the generic keys do not cover)
EXTRA = {
    "gptj": dict(rotary_dim=8),
    "qwen2_moe": dict(moe_intermediate_size=32, shared_expert_intermediate_size=32, num_experts=4,
                      num_experts_per_tok=2),
    "qwen3_moe": dict(moe_intermediate_size=32, num_experts=4, num_experts_per_tok=2),
    "mixtral": dict(num_local_experts=4, num_experts_per_tok=2),
}


def tiny_lm(model_type: str, layers: int = 2, seed: int = 0, scale: float = 4.0, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = {**BASE, **EXTRA.get(model_type, {}), "num_hidden_layers": layers, **overrides}
    cfg = AutoConfig.for_model(model_type, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    out = model.get_output_embeddings()
    with torch.no_grad():
        out.weight.mul_(scale)
    return model


def draft_of(target, layers: int = 1):
    """The target's first ``layers`` layers with its embeddings, final norm and head: a draft of the same
    architecture that agrees with the target on some tokens and not others (both accepted and rejected
    drafts get exercised)."""
    from transformers import AutoModelForCausalLM

    cfg = type(target.config).from_dict(target.config.to_dict())
    cfg.num_hidden_layers = layers
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = cfg.layer_types[:layers]
    draft = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    own = draft.state_dict()
    draft.load_state_dict({k: v for k, v in target.state_dict().items() if k in own and own[k].shape == v.shape},
                          strict=False)
    return draft


def hf_greedy(model, prompt: torch.Tensor, new: int) -> torch.Tensor:
    """HF ``generate`` greedy output [1, prompt + new], the reference (its own cache and masks)."""
    return model.generate(prompt, max_new_tokens=new, do_sample=False, min_new_tokens=new)


def tiny_llama(seed: int, vocab: int = 6, hidden: int = 32, layers: int = 2, scale: float = 4.0):
    """A randomly initialised Llama with a small vocabulary whose next-token distributions are far from
    uniform (output embeddings scaled up), fast enough for thousands of seeded generations."""
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(seed)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(scale)
    return m
