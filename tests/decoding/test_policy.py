"""The draft-length policy: the +2 / -1 rule, and the fallbacks to plain decoding when drafting does not pay
(estimated from the models' sizes, or measured from the steps' wall times)."""
import copy
import time

import pytest
import torch

import fastdecode
from tiny_models import tiny_llama
from fastdecode.config import SpeculativeConfig
from fastdecode.decoding.policy import DraftLengthPolicy, MeasuredSwitch, cost_ratio, measured_switch


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
                                  eos_token_id=[], cache_implementation=engine, fallback="estimated")
        assert torch.equal(out.sequences, ref), engine
        assert out.stats.extra.get("plain_steps", 0) > 10, engine
        assert out.stats.draft_calls < 60, engine


class FakeClock:
    """A clock that moves only when the test moves it (``now``); :func:`_run_switch` advances it per step."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _run_switch(sw, clock, cost, tokens, steps):
    """``steps`` steps of ``sw``, each taking ``cost[drafting]`` seconds and emitting ``tokens[drafting]``
    tokens; returns the kinds chosen (True: drafting)."""
    kinds = []
    for _ in range(steps):
        d = sw.draft_next()
        kinds.append(d)
        sw.emitted(tokens[d])
        clock.now += cost[d]
    return kinds


def test_measured_switch_keeps_drafting_while_it_pays():
    clock = FakeClock()
    sw = MeasuredSwitch(window=8, probe=4, reprobe=64, clock=clock)
    kinds = _run_switch(sw, clock, cost={True: 0.012, False: 0.010}, tokens={True: 3, False: 1}, steps=200)
    # 5 drafting steps (the first, the prefill, untimed), 4 plain ones to time plain decoding, then drafting
    # with two plain steps every 64 to re-time it
    assert kinds[:9] == [True] * 5 + [False] * 4
    assert kinds.count(False) <= 4 + 2 * (200 // 64) and all(kinds[9:70])
    assert sw.rate(True) == pytest.approx(3 / 0.012) and sw.rate(False) == pytest.approx(1 / 0.010)


def test_measured_switch_falls_back_probes_and_recovers():
    clock = FakeClock()
    sw = MeasuredSwitch(window=8, probe=4, pause=8, clock=clock)
    slow = {True: 0.030, False: 0.010}                 # drafting: 1.5 tokens per 30 ms < 1 per 10 ms
    kinds = _run_switch(sw, clock, slow, tokens={True: 1, False: 1}, steps=120)
    assert kinds.count(False) > 90                     # mostly plain, with drafting probes in between
    probes = [i for i in range(10, 120) if kinds[i]]
    assert probes and len(probes) < 20
    # the pause doubles while drafting keeps losing: the gaps between probes grow
    starts = [i for i in probes if not kinds[i - 1]]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0]
    # the draft becomes cheap and good: the next probes see it and drafting resumes (plain only to re-time)
    kinds = _run_switch(sw, clock, {True: 0.010, False: 0.010}, tokens={True: 4, False: 1}, steps=200)
    assert kinds[-64:].count(False) <= 2


def test_measured_switch_ignores_the_first_step_and_outliers():
    clock = FakeClock()
    sw = MeasuredSwitch(window=8, probe=4, clock=clock)
    assert sw.draft_next()
    sw.emitted(2)
    clock.now += 5.0          # the first step: the prompt's prefill
    for _ in range(4):
        assert sw.draft_next()
        sw.emitted(2)
        clock.now += 0.01
    assert sw.rate(True) is None   # three timed steps: fewer than probe
    for i in range(5):
        assert not sw.draft_next()          # four plain steps are planned, then plain wins
        clock.now += 1.0 if i == 0 else 0.001
    # the 1 s plain step (a graph recorded) is left out
    assert sw.rates == pytest.approx(dict(drafting=2 / 0.01, plain=1 / 0.001))
    assert sw.rate(True) is None            # drafting is timed afresh by the probe after the pause


def test_measured_switch_starts_from_the_last_call():
    """Timings are kept on the target per key: a second call of the same kind does not re-time plain steps."""
    from fastdecode.decoding.policy import measured_switch

    target = torch.nn.Linear(1, 1)
    clock = FakeClock()
    first = measured_switch(target, "k")
    first.clock = clock
    kinds = _run_switch(first, clock, {True: 0.01, False: 0.01}, tokens={True: 3, False: 1}, steps=20)
    assert kinds.count(False) == 3
    again = measured_switch(target, "k")
    again.clock = clock
    assert all(_run_switch(again, clock, {True: 0.01, False: 0.01}, tokens={True: 3, False: 1}, steps=20))
    other = measured_switch(target, "other key")
    other.clock = clock
    assert _run_switch(other, clock, {True: 0.01, False: 0.01}, tokens={True: 3, False: 1}, steps=20).count(False) == 3
    # short calls still re-time plain decoding every 64 drafting steps, counted across calls
    kinds = []
    for _ in range(20):
        sw = measured_switch(target, "short calls")
        sw.clock = clock
        kinds += _run_switch(sw, clock, {True: 0.01, False: 0.01}, {True: 3, False: 1}, 10)
    assert kinds[:8] == [True] * 4 + [False] * 3 + [True]   # the first call times plain steps, then
    assert kinds.count(False) == 3 + 2 * ((200 - 7) // 66)  # two more every 64 drafting steps


def test_a_new_switch_inherits_the_last_one_s_knowledge():
    """A batch keeps one switch per number of live rows: the count that appears when rows finish starts from
    the last count's timings and pause instead of probing afresh; a switch with timings of its own keeps them."""
    clock = FakeClock()
    slow = {True: 0.030, False: 0.010}
    last = MeasuredSwitch(window=8, probe=4, pause=8, clock=clock)
    _run_switch(last, clock, slow, tokens={True: 1, False: 1}, steps=12)   # plain won: a pause under way
    assert last.plan and not last.plan[0]
    rest = list(last.plan)
    new = MeasuredSwitch(window=8, probe=4, pause=8, clock=clock)
    new.inherit(last)
    kinds = _run_switch(new, clock, slow, tokens={True: 1, False: 1}, steps=len(rest))
    assert kinds == rest and kinds[0] is False       # the pause goes on, then its probe (not a fresh start)
    fresh = MeasuredSwitch(window=8, probe=4, pause=8, clock=clock)
    assert _run_switch(fresh, clock, slow, tokens={True: 1, False: 1}, steps=6)[:5] == [True] * 5
    own = MeasuredSwitch(window=8, probe=4, pause=8, clock=clock)
    _run_switch(own, clock, {True: 0.01, False: 0.01}, tokens={True: 3, False: 1}, steps=12)
    rates = dict(drafting=own.rate(True), plain=own.rate(False))
    own.inherit(last)
    assert dict(drafting=own.rate(True), plain=own.rate(False)) == rates


def _slowed(model, seconds):
    """A copy of ``model`` whose every forward also sleeps ``seconds`` (a model that costs that much)."""
    m = copy.deepcopy(model)
    m.register_forward_hook(lambda *_: time.sleep(seconds))
    return m


@pytest.mark.parametrize("engine", ["dynamic", "static"])
def test_measured_fallback_follows_the_real_costs(engine):
    """The draft is the target itself (every draft accepted), so the size-based cost ratio is 1 and the
    estimated fallback stops drafting. Measured: with a slow target drafting pays and goes on; with a slow
    draft it does not, and the steps are plain. Greedy output equals HF's throughout."""
    target = tiny_llama(3, vocab=64, layers=2)
    ids = torch.tensor([[1, 2, 3, 4]])
    ref = target.generate(ids, max_new_tokens=90, min_new_tokens=90, do_sample=False)
    kw = dict(method="speculative", temperature=0, max_new_tokens=90, eos_token_id=[], draft_length=2,
              max_draft_length=2, cache_implementation=engine)
    slow_target = _slowed(target, 0.02)
    fast = fastdecode.generate(slow_target, ids, draft=target, **kw)
    est = fastdecode.generate(slow_target, ids, draft=target, fallback="estimated", **kw)
    assert torch.equal(fast.sequences, ref) and torch.equal(est.sequences, ref)
    rates = fast.stats.extra["measured_tokens_per_s"]
    assert rates["drafting"] > 1.2 * rates["plain"]   # (about 1.8x)
    assert fast.stats.extra["plain_steps"] <= 7 < est.stats.extra["plain_steps"]
    slow = fastdecode.generate(target, ids, draft=_slowed(target, 0.02), **kw)
    assert torch.equal(slow.sequences, ref)
    rates = slow.stats.extra["measured_tokens_per_s"]
    assert rates["plain"] > 1.5 * rates["drafting"]
    assert slow.stats.extra["plain_steps"] > 40 and slow.stats.draft_calls < 40   # (about 50 and 26)


def test_measured_fallback_in_a_batch():
    """A batch decides plain or drafting steps once for all its rows, by the batch's measured rates."""
    target = tiny_llama(3, vocab=64, layers=2)
    ids = torch.tensor([[0, 1, 2, 3, 4], [0, 0, 7, 8, 9]])
    mask = (torch.arange(5) >= torch.tensor([[1], [2]])).long()
    ref = target.generate(ids, attention_mask=mask, max_new_tokens=60, min_new_tokens=60, do_sample=False,
                          pad_token_id=0)
    out = fastdecode.generate(target, ids, attention_mask=mask, draft=_slowed(target, 0.02), method="speculative",
                              temperature=0, max_new_tokens=60, eos_token_id=[], pad_token_id=0)
    assert torch.equal(out.sequences, ref)
    rates = out.stats.extra["measured_tokens_per_s"]
    assert rates["plain"] > 1.5 * rates["drafting"] and out.stats.extra["plain_steps"] > 30


def test_fallback_choice_and_errors():
    target = tiny_llama(3, vocab=64, layers=2)
    draft = tiny_llama(4, vocab=64, layers=1)
    ids = torch.tensor([[1, 2, 3]])
    kw = dict(draft=draft, method="speculative", max_new_tokens=4, eos_token_id=[])

    def used(**extra):
        return fastdecode.generate(target, ids, **kw, **extra).stats.extra.get("fallback")
    # measured by default (greedy, or sampling without a seed); a seed makes it the deterministic estimate
    assert used(temperature=0) == used(temperature=0, seed=0) == used(temperature=1) == "measured"
    assert used(temperature=1, seed=0) == "estimated"
    assert used(temperature=1, seed=0, fallback="measured") == "measured"
    assert used(temperature=1, fallback="off") == "off"
    assert used(temperature=1, adaptive_draft=False) is None   # a fixed length never falls back
    ids2 = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = fastdecode.generate(target, ids2, pad_token_id=0, temperature=0, **kw)
    assert out.stats.extra["fallback"] == "measured"
    with pytest.raises(ValueError, match="fallback must be one of"):
        fastdecode.generate(target, ids, fallback="sometimes", **kw)
    with pytest.raises(ValueError, match="adaptive draft length"):
        fastdecode.generate(target, ids, fallback="measured", adaptive_draft=False, **kw)
    with pytest.raises(ValueError, match="fallback= applies to"):
        fastdecode.generate(target, ids, draft=draft, method="multi_draft", num_drafts=2, fallback="off",
                            max_new_tokens=4)
    with pytest.raises(ValueError, match="fallback= applies to"):
        fastdecode.generate(target, ids, fallback="off", max_new_tokens=4)


def test_estimated_fallback_never_stops_prompt_lookup():
    """An n-gram draft costs no forward: with the estimated rule, prompt lookup (even with a draft model for
    the steps without a match, one as large as the target) never takes plain steps."""
    target = tiny_llama(3, vocab=64, layers=2)
    ids = torch.tensor([[1, 2, 3, 1, 2, 3, 4]])
    out = fastdecode.generate(target, ids, draft=copy.deepcopy(target), method="prompt_lookup", temperature=0,
                              max_new_tokens=60, eos_token_id=[], fallback="estimated")
    assert out.stats.extra["fallback"] == "off" and "plain_steps" not in out.stats.extra


def test_switch_kept_apart_for_packed_and_plain_products(monkeypatch):
    """Packed linear layers change every cost: their timings must not steer a call with MKL's products."""
    from fastdecode.kernels import cpu_linear
    from fastdecode.kernels.cpu_linear import packed_linears, packing_available

    if not packing_available():
        pytest.skip("this torch build lacks oneDNN")
    monkeypatch.setattr(cpu_linear, "MIN_PACKED", 0)   # the tiny model's layers are below the size rule
    target = tiny_llama(3, vocab=16)
    with torch.no_grad():
        plain = measured_switch(target, "k")
        with packed_linears(target):
            packed = measured_switch(target, "k")
        assert measured_switch(target, "k") is plain and packed is not plain
