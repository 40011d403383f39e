"""Shared fixtures: the real code pair, standard-library prompts, and tiny random Llama pairs."""
from __future__ import annotations

import os

# Triton kernels are tested on the CPU in interpreter mode; the variable must be set before triton is
# first imported by any test module (fastdecode.kernels imports it when present).
if os.environ.get("FASTDECODE_TEST_DEVICE", "cpu") == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: one torch thread per worker, not two each on 2 cores
    torch.set_num_threads(1)

from tiny_models import tiny_llama


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


@pytest.fixture(scope="session")
def tiny_pair():
    return tiny_llama(1), tiny_llama(2, scale=3.0)


@pytest.fixture(scope="session")
def law2(tiny_pair):
    """The exact law of the target's first two tokens after distribution.LAW_PROMPT (enumeration)."""
    from distribution import LAW_PROMPT, exact_law
    return exact_law(tiny_pair[0], LAW_PROMPT, 2)
