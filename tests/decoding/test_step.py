"""decoding/step.py: one chain step on the dynamic engine (draft, score in one target forward, verify,
crop), on a tiny random Llama pair at temperature 0, where the outcome is known from plain greedy decoding."""
import pytest
import torch

from fastdecode.config import SamplingConfig
from fastdecode.decoding import hf_cache as kv
from fastdecode.decoding.step import CHAIN_VERIFIERS, draft_tokens, verify_step
from fastdecode.stats import DecodeStats
from tiny_models import tiny_llama

GREEDY = SamplingConfig(temperature=0.0)
PROMPT = [1, 4, 2, 7]


@pytest.fixture(scope="module")
def pair():
    return tiny_llama(1, vocab=11), tiny_llama(2, vocab=11, scale=3.0)


@torch.inference_mode()
def _greedy(model, tokens, n):
    out = list(tokens)
    for _ in range(n):
        out.append(int(model(input_ids=torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(tokens):]


@torch.inference_mode()
def test_draft_tokens_are_the_draft_s_greedy_continuation(pair):
    _, draft = pair
    stats, cache = DecodeStats(), kv.new_cache(draft)
    drafts, q = draft_tokens(draft, cache, PROMPT, 3, GREEDY, None, stats)
    assert drafts.tolist() == _greedy(draft, PROMPT, 3) and q.shape == (3, 11)
    assert stats.draft_calls == 3 and kv.cache_length(cache) == len(PROMPT) + 2   # the last draft is not fed yet
    none, q0 = draft_tokens(draft, kv.new_cache(draft), PROMPT, 0, GREEDY, None, stats)
    assert none.numel() == 0 and q0 is None


@torch.inference_mode()
@pytest.mark.parametrize("verifier", sorted(CHAIN_VERIFIERS))
def test_verify_step_keeps_the_target_s_greedy_prefix_and_crops(pair, verifier):
    target, draft = pair
    want = _greedy(target, PROMPT, 4)
    drafts = torch.tensor([want[0], want[1], (want[2] + 1) % 11])     # two right, the third wrong
    stats, cache = DecodeStats(), kv.new_cache(target)
    v = verify_step(target, cache, PROMPT, drafts, None, GREEDY, CHAIN_VERIFIERS[verifier], None, stats)
    assert (v.n_draft, v.n_accepted, v.tokens) == (3, 2, want[:3])    # the third token is the target's own
    assert v.logits.shape == (4, 11) and v.fed == len(PROMPT) + 3
    assert kv.cache_length(cache) == len(PROMPT) + 2 and stats.target_calls == 1 and stats.accepted_tokens == 2


@torch.inference_mode()
def test_verify_step_without_drafts_is_a_plain_step(pair):
    target, _ = pair
    stats, cache = DecodeStats(), kv.new_cache(target)
    v = verify_step(target, cache, PROMPT, torch.empty(0, dtype=torch.long), None, GREEDY,
                    CHAIN_VERIFIERS["token"], None, stats)
    assert v.tokens == _greedy(target, PROMPT, 1) and v.n_draft == 0 and stats.drafted_tokens == 0
