"""Plain decoding on the static engine queues several steps per host read on CUDA (``static._queued_steps``).
Here the queue is forced on the CPU: the same greedy tokens as HF ``generate`` whatever the queue length
and budget, EOS inside a queue (the tokens after it dropped), the same seeded samples as the dynamic engine,
NaN logits in the middle of a queue still an error, and the CUDA default."""
import pytest
import torch

import fastdecode
import fake_graphs
from fastdecode.decoding import static
from streamers import Recorder
from tiny_models import tiny_llama

PROMPT = torch.tensor([[1, 2, 3, 4, 5]])


@pytest.fixture
def target():
    return tiny_llama(5, vocab=32)


def _queue(monkeypatch, n: int) -> None:
    monkeypatch.setattr(static, "_queued_steps", lambda run: n)


@pytest.mark.parametrize("queue", [2, 3, 8])
@pytest.mark.parametrize("new", [1, 7, 12])
def test_greedy_equals_hf(target, monkeypatch, queue, new):
    _queue(monkeypatch, queue)
    ref = target.generate(PROMPT, max_new_tokens=new, do_sample=False, eos_token_id=None)
    out = fastdecode.generate(target, PROMPT, temperature=0, max_new_tokens=new, eos_token_id=[],
                              cache_implementation="static")
    assert torch.equal(out.sequences, ref)
    assert out.stats.new_tokens == new and out.stats.target_calls == new   # no forward past the budget


def test_eos_inside_a_queue(target, monkeypatch):
    """EOS as the 4th new token, queue 3: the read of steps 2-4 holds it; the queue after it is never started,
    and a queue holding tokens past it drops them (they are computed, and counted as forwards)."""
    free = target.generate(PROMPT, max_new_tokens=12, do_sample=False, eos_token_id=None)[0, 5:].tolist()
    eos = free[3]
    first = free.index(eos)
    ref = target.generate(PROMPT, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0)
    for queue in (3, 5):
        _queue(monkeypatch, queue)
        out = fastdecode.generate(target, PROMPT, temperature=0, max_new_tokens=12, eos_token_id=eos,
                                  cache_implementation="static")
        assert torch.equal(out.sequences, ref[:, : 5 + first + 1])
        assert out.stats.new_tokens == first + 1
        assert out.stats.target_calls == 1 + queue * -(-first // queue)   # the prefill, then whole queues


def test_seeded_samples_equal_the_dynamic_engine(target, monkeypatch):
    _queue(monkeypatch, 4)
    kw = dict(temperature=1.0, max_new_tokens=11, eos_token_id=[], seed=5)
    ref = fastdecode.generate(target, PROMPT, **kw).sequences
    assert torch.equal(fastdecode.generate(target, PROMPT, cache_implementation="static", **kw).sequences, ref)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_nan_inside_a_queue_raises(target, monkeypatch, temperature):
    """NaN logits at the 3rd step of a queue of 4 (not at the prefill): the queue's read raises."""
    _queue(monkeypatch, 4)
    calls = []

    def poison(module, args, out):
        calls.append(1)
        return out.masked_fill(torch.ones_like(out, dtype=torch.bool), float("nan")) if len(calls) == 4 else out
    target.lm_head.register_forward_hook(poison)
    with pytest.raises(ValueError, match="NaN or \\+inf logits"):
        fastdecode.generate(target, PROMPT, temperature=temperature, seed=0, max_new_tokens=10, eos_token_id=[],
                            cache_implementation="static")


def test_recorded_forwards_with_a_queue(target, monkeypatch):
    """The queue on recorded forwards (the CPU stand-in for CUDA graphs): every step reads the previous step's
    token from the device and overwrites the one output buffer."""
    fake_graphs.install(monkeypatch)
    _queue(monkeypatch, 4)
    ref = target.generate(PROMPT, max_new_tokens=10, do_sample=False, eos_token_id=None)
    out = fastdecode.generate(target, PROMPT, temperature=0, max_new_tokens=10, eos_token_id=[],
                              cache_implementation="static", compile="cudagraphs")
    assert torch.equal(out.sequences, ref)


def test_queue_lengths():
    class Run:
        def __init__(self, kind):
            self.device = torch.device(kind)
    assert static._queued_steps(Run("cuda")) == static.QUEUED_STEPS > 1
    assert static._queued_steps(Run("cpu")) == 1


def test_chain_plain_steps_are_queued(target, monkeypatch):
    """A draft that is never right: the estimated fallback pauses drafting, and the chain loop queues the
    paused plain steps (4 per read here). Greedy = HF; sampled = the dynamic engine for a seed (the estimated
    fallback decides the same steps on both engines); the queued reads are fewer than the plain steps."""
    _queue(monkeypatch, 4)
    draft = tiny_llama(9, vocab=32, layers=1, scale=3.0)
    reads = []
    orig = static._plain_steps
    monkeypatch.setattr(static, "_plain_steps", lambda run, last, pos, k, *a: reads.append(k) or orig(run, last, pos, k, *a))
    kw = dict(draft=draft, method="speculative", fallback="estimated", max_new_tokens=40, eos_token_id=[])
    ref = target.generate(PROMPT, max_new_tokens=40, do_sample=False, eos_token_id=None)
    out = fastdecode.generate(target, PROMPT, temperature=0, cache_implementation="static", **kw)
    assert torch.equal(out.sequences, ref)
    plain = out.stats.extra.get("plain_steps", 0)
    assert plain >= 8 and max(reads) == 4 and len(reads) < plain
    dyn = fastdecode.generate(target, PROMPT, temperature=1.0, seed=3, **kw).sequences
    assert torch.equal(fastdecode.generate(target, PROMPT, temperature=1.0, seed=3, cache_implementation="static",
                                           **kw).sequences, dyn)


def test_plain_run_takes_planned_plain_steps():
    from fastdecode.config import SpeculativeConfig
    from fastdecode.decoding.policy import DraftLengthPolicy, MeasuredSwitch
    sw = MeasuredSwitch()
    pol = DraftLengthPolicy(SpeculativeConfig(draft_length=4, adaptive=True), None, switch=sw)
    sw.plan.extend([False, False, False, False, True, False])
    assert pol.next_length(100) == 0                 # the first planned plain step
    assert pol.plain_run(8) == 4 and list(sw.plan) == [True, False] and (sw.tokens, sw.steps) == (4, 4)
    assert pol.next_length(100) > 0                  # then the planned drafting step
    sw.plan.extend([False, False, False])
    assert pol.next_length(100) == 0 and pol.plain_run(2) == 2 and list(sw.plan) == [False, False]
    paused = DraftLengthPolicy(SpeculativeConfig(draft_length=4, adaptive=True), 0.5)
    paused.paused = 5
    assert paused.next_length(100) == 0 and paused.plain_run(3) == 3 and paused.paused == 2
    assert paused.plain_steps == 3


def test_streamer_and_progress_get_each_read(target, monkeypatch):
    """A streamer gets the prompt, then each read's kept tokens (cut at EOS), then end(); the counts add up."""
    _queue(monkeypatch, 3)
    free = target.generate(PROMPT, max_new_tokens=12, do_sample=False, eos_token_id=None)[0, 5:].tolist()
    eos = free[4]
    first = free.index(eos)
    assert first == 4   # (this model's text: EOS as the 5th new token, inside the second read of 3)
    rec = Recorder()
    out = fastdecode.generate(target, PROMPT, temperature=0, max_new_tokens=12, eos_token_id=eos,
                              cache_implementation="static", streamer=rec, progress=True)
    puts = [p[0].tolist() for p in rec.puts]
    assert rec.ended == 1 and puts[0] == PROMPT[0].tolist()
    assert sum(puts[1:], []) == free[: first + 1] == out.sequences[0, 5:].tolist()
    assert [len(p) for p in puts[1:]] == [1, 3, 1]   # the prefill's token, a read of 3, one cut at EOS


def test_lambda_ring_with_a_queue(target, monkeypatch):
    """Lambda attention's ring on the static engine with queued plain steps = the dynamic engine, past the window."""
    from fastdecode import LambdaAttention
    _queue(monkeypatch, 4)
    cfg = LambdaAttention(window=6, num_global=2)
    kw = dict(temperature=0, max_new_tokens=20, eos_token_id=[], lambda_attention=cfg)
    ref = fastdecode.generate(target, PROMPT, **kw).sequences
    assert torch.equal(fastdecode.generate(target, PROMPT, cache_implementation="static", **kw).sequences, ref)


def test_queued_plain_steps_time_plain_decoding_as_that_many_steps():
    """The measured switch's first look at plain decoding takes ``probe`` plain steps: queued together they are
    one sample of that many steps, enough for a rate, with the outlier cut on their time per step."""
    from fastdecode.config import SpeculativeConfig
    from fastdecode.decoding.policy import DraftLengthPolicy, MeasuredSwitch
    now = [0.0]
    sw = MeasuredSwitch(clock=lambda: now[0])
    pol = DraftLengthPolicy(SpeculativeConfig(draft_length=4, adaptive=True), None, switch=sw)
    for _ in range(4):                      # the first (untimed) and 3 timed drafting steps: 3 tokens in 3 ms each
        assert pol.next_length(100) > 0
        pol.update(4, 2)
        now[0] += 3e-3
    assert pol.next_length(100) == 0 and pol.plain_run(8) == 3     # the probe's 3 plain steps, queued
    now[0] += 3 * 0.5e-3                    # 0.5 ms per plain token: plain decoding wins
    assert pol.next_length(100) == 0        # decided at once, from the one queued sample
    assert sw.rates == pytest.approx(dict(drafting=1000.0, plain=2000.0)) and sw.losses == 1   # a pause began
