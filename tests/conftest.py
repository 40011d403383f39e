"""Shared fixtures: the real code pair, standard-library prompts, and tiny random Llama pairs."""
from __future__ import annotations

import os

# Triton kernels are tested on the CPU in interpreter mode; the variable must be set before triton is
# first imported by any test module (fastdecode.kernels imports it when present).
if os.environ.get("FASTDECODE_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    """Every test on the real code pair is slow (it loads and runs a 20 M-parameter model): mark it so
    that ``pytest -m "not slow"`` is the fast tier on tiny random models. CI runs everything."""
    for item in items:
        if "code_pair" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def code_pair():
    from fastdecode.models import load_pair
    torch.manual_seed(0)
    target, draft, tok = load_pair()
    return target, draft, tok


@pytest.fixture(scope="session")
def stdlib_prompts(code_pair):
    from prompts import stdlib_prompts
    return stdlib_prompts(code_pair[2], n=8, prompt_tokens=48)


def kernel_module(name: str, device: str = "cpu"):
    """``fastdecode.kernels.<name>``; on the CPU its Triton kernel (built on first use) is the interpreter's."""
    import importlib

    from triton.runtime.interpreter import InterpretedFunction

    m = importlib.import_module(f"fastdecode.kernels.{name}")
    if device == "cpu":
        assert isinstance(m._kernel(), InterpretedFunction), "TRITON_INTERPRET=1 must be set before a kernel's first use"
    return m


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


@pytest.fixture(scope="session")
def tiny_pair():
    return tiny_llama(1), tiny_llama(2, scale=3.0)
