"""The draft-length policy: the +2 / -1 rule, and the fallback to plain decoding when drafting cannot pay."""
import torch

import fastdecode
from tiny_models import tiny_llama
from fastdecode.config import SpeculativeConfig
from fastdecode.decoding.policy import DraftLengthPolicy, cost_ratio


def test_adaptive_rule_and_fixed_length():
    pol = DraftLengthPolicy(SpeculativeConfig(draft_length=4, adaptive=True, max_draft_length=7), cost=0.1)
    assert pol.next_length(100) == 4
    pol.update(4, 4)
    assert pol.next_length(100) == 6
    pol.update(6, 6)
    assert pol.next_length(100) == 7  # capped
    pol.update(7, 2)
    assert pol.next_length(100) == 6
    assert pol.next_length(3) == 2   # never past the budget (the last token is the residual or bonus)
    fixed = DraftLengthPolicy(SpeculativeConfig(draft_length=4, adaptive=False), cost=0.9)
    for _ in range(40):
        fixed.update(4, 0)
    assert fixed.next_length(100) == 4 and fixed.plain_steps == 0


def test_fallback_pauses_then_probes_then_recovers():
    pol = DraftLengthPolicy(SpeculativeConfig(draft_length=2, adaptive=True), cost=0.5, window=4, pause=3)
    for _ in range(4):
        pol.update(pol.next_length(100), 0)  # the first draft is always rejected: alpha_1 = 0 <= 0.5
    assert [pol.next_length(100) for _ in range(3)] == [0, 0, 0] and pol.plain_steps == 3
    assert pol.next_length(100) == 1  # the probe
    pol.update(1, 1)
    assert pol.next_length(100) == 0  # 1 of 4 accepted: still below the cost, pause again
    for _ in range(2):
        pol.next_length(100)
    probes = 0
    while pol.probing:  # probes keep being accepted: alpha_1 climbs above the cost, the pause ends
        while pol.paused:
            assert pol.next_length(100) == 0
        assert pol.next_length(100) == 1
        pol.update(1, 1)
        probes += 1
    assert probes == 2 and pol.next_length(100) > 1  # [F, T, T, T] = 0.75 > 0.5, and the length grew again


def test_cost_ratio_from_sizes():
    big, small = tiny_llama(1, vocab=64, layers=4), tiny_llama(2, vocab=64, layers=1)
    params = sum(p.numel() for p in small.parameters()) / sum(p.numel() for p in big.parameters())
    assert params > 0.25 and cost_ratio(big, small) == params  # the larger of the parameter and layer ratios
    assert cost_ratio(big, big) == 1.0


def test_unprofitable_draft_falls_back_and_stays_exact():
    """An unrelated draft almost never agrees with the target: after a window of steps the policy decodes
    plainly (probing now and then); greedy output is still exactly HF's, on both engines."""
    target, draft = tiny_llama(3, vocab=64, layers=2), tiny_llama(4, vocab=64, layers=1)
    ids = torch.tensor([[1, 2, 3, 4]])
    ref = target.generate(ids, max_new_tokens=60, min_new_tokens=60, do_sample=False)
    for engine in ("dynamic", "static"):
        out = fastdecode.generate(target, ids, draft=draft, method="speculative", temperature=0, max_new_tokens=60,
                                  eos_token_id=[], cache_implementation=engine)
        assert torch.equal(out.sequences, ref), engine
        assert out.stats.extra.get("plain_steps", 0) > 10, engine
        assert out.stats.draft_calls < 60, engine
