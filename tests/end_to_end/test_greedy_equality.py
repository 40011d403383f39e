"""Greedy output of every lossless method equals plain HF greedy `generate`, token for token, on the real pair."""
import pytest
import torch

import fastdecode

pytestmark = pytest.mark.slow  # the real code pair, about 7 minutes on 2 loaded cores

NEW = 40


@pytest.fixture(scope="module")
def hf_greedy(code_pair, stdlib_prompts):
    target = code_pair[0]
    return [target.generate(torch.tensor([p]), max_new_tokens=NEW, do_sample=False) for p in stdlib_prompts]


def _check(code_pair, stdlib_prompts, hf_greedy, prompts, **kw):
    target, draft, _ = code_pair
    for i in prompts:
        out = fastdecode.generate(target, torch.tensor([stdlib_prompts[i]]), draft=draft, temperature=0,
                                  max_new_tokens=NEW, **kw)
        assert torch.equal(out.sequences, hf_greedy[i]), f"prompt {i} differs from HF greedy with {kw}"


def test_autoregressive_equals_hf(code_pair, stdlib_prompts, hf_greedy):
    _check(code_pair, stdlib_prompts, hf_greedy, range(8), method="autoregressive")


@pytest.mark.parametrize("draft_length,adaptive", [(1, False), (5, False), (4, True)])
def test_speculative_equals_hf(code_pair, stdlib_prompts, hf_greedy, draft_length, adaptive):
    _check(code_pair, stdlib_prompts, hf_greedy, range(8), method="speculative", draft_length=draft_length,
           adaptive_draft=adaptive)


def test_block_verifier_equals_hf(code_pair, stdlib_prompts, hf_greedy):
    _check(code_pair, stdlib_prompts, hf_greedy, range(4), method="speculative", verifier="block")


@pytest.mark.parametrize("k", [1, 2, 4])
def test_multi_draft_equals_hf(code_pair, stdlib_prompts, hf_greedy, k):
    _check(code_pair, stdlib_prompts, hf_greedy, range(4), method="multi_draft", num_drafts=k, draft_length=3)


def test_adaptive_multi_draft_equals_hf(code_pair, stdlib_prompts, hf_greedy):
    _check(code_pair, stdlib_prompts, hf_greedy, range(4), method="multi_draft", num_drafts=2, draft_length=2,
           adaptive_draft=True)


@pytest.mark.parametrize("verifier", ["rrs_without_replacement", "spectr", "greedy_draft", "optimal", "typical"])
def test_multi_draft_every_verifier_is_greedy_at_t0(code_pair, stdlib_prompts, hf_greedy, verifier):
    _check(code_pair, stdlib_prompts, hf_greedy, range(2), method="multi_draft", num_drafts=3, draft_length=3,
           verifier=verifier)
