"""The static engine's recorded speculative step (``decoding.static_step``): on CUDA the draft chain and the
verification are each one recorded graph. Here the CPU stand-in graphs (``fake_graphs``: recomputed on every
replay into the recorded outputs, host reads refused) run them: greedy output equals HF ``generate``; sampled
output equals the dynamic engine's token for token for the same seed (same draws in the same order), so
it has the target's law, which the 2-token chi-square checks directly, with a broken rule caught; each
(g, sampling) is recorded once; a step queues a fraction of the unrecorded step's ops; NaN logits of either
model are still an error."""
import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fake_graphs
import fastdecode
from distribution import LAW_PROMPT, LAW_RUNS, caught, chi_square_pvalue, sample_law
from fastdecode.decoding import static_step
from tiny_models import draft_of, tiny_lm, tiny_llama

PROMPT = torch.tensor([[1, 2, 3, 4, 5]])
ALPHA = 1e-3


@pytest.fixture
def pair():
    return tiny_llama(5, vocab=32), tiny_llama(6, vocab=32, layers=1)


@pytest.fixture
def recorded(monkeypatch):
    """The stand-in graphs installed; returns the list of (runner id, key) recordings."""
    return fake_graphs.install(monkeypatch)


def _kinds(records) -> collections.Counter:
    return collections.Counter(key[0] for _, key in records)


@pytest.mark.parametrize("kw", [dict(draft_length=1, adaptive_draft=False), dict(draft_length=3, adaptive_draft=False),
                                dict(draft_length=5, adaptive_draft=False),
                                dict(confidence_threshold=0.0, fallback="off"),
                                dict(confidence_threshold=0.0, fallback="estimated")])
@pytest.mark.parametrize("new", [7, 16])
def test_greedy_equals_hf(pair, recorded, kw, new):
    target, draft = pair
    ref = target.generate(PROMPT, max_new_tokens=new, do_sample=False, eos_token_id=None)
    out = fastdecode.generate(target, PROMPT, draft=draft, method="speculative", temperature=0, max_new_tokens=new,
                              eos_token_id=[], cache_implementation="static", compile="cudagraphs", **kw)
    assert torch.equal(out.sequences, ref)
    assert _kinds(recorded)["draft_chain"] >= 1 and _kinds(recorded)["verify"] >= 1


@pytest.mark.parametrize("sampling", [dict(temperature=1.0), dict(temperature=0.7, top_k=5),
                                      dict(temperature=1.3, top_p=0.8)])
@pytest.mark.parametrize("kw", [dict(draft_length=2, adaptive_draft=False), dict(draft_length=4, adaptive_draft=False),
                                dict(confidence_threshold=0.0, fallback="off")])
def test_seeded_samples_equal_the_dynamic_engine(pair, recorded, sampling, kw):
    """The recorded step draws what the unrecorded one draws, in the same order (the drafts' noise rows, the
    uniforms, the residual's row): the dynamic engine's tokens for the same seed."""
    target, draft = pair
    for seed in range(3):
        args = dict(draft=draft, method="speculative", max_new_tokens=14, seed=seed, eos_token_id=[], **sampling, **kw)
        ref = fastdecode.generate(target, PROMPT, **args).sequences
        out = fastdecode.generate(target, PROMPT, cache_implementation="static", compile="cudagraphs", **args)
        assert torch.equal(out.sequences, ref), (seed, sampling, kw)
    assert _kinds(recorded)["draft_chain"] >= 1 and _kinds(recorded)["verify"] >= 1


def test_frozen_replays(pair, monkeypatch):
    """Replays of a traced copy of each recording, Python values baked in as a CUDA graph bakes them (the other
    tests re-run the recorded function, ~6x cheaper): the same greedy and seeded tokens, so no recorded function
    reads Python state that changes between replays."""
    records = fake_graphs.install(monkeypatch, frozen=True)
    target, draft = pair
    for kw in (dict(temperature=0, draft_length=3, adaptive_draft=False),
               dict(temperature=0, confidence_threshold=0.0, fallback="off"),
               dict(temperature=1.0, seed=1, draft_length=2, adaptive_draft=False),
               dict(temperature=0.7, top_k=5, seed=2, confidence_threshold=0.0, fallback="off")):
        args = dict(draft=draft, method="speculative", max_new_tokens=14, eos_token_id=[], **kw)
        ref = fastdecode.generate(target, PROMPT, **args).sequences
        out = fastdecode.generate(target, PROMPT, cache_implementation="static", compile="cudagraphs", **args)
        assert torch.equal(out.sequences, ref), kw
    assert _kinds(records)["draft_chain"] >= 2 and _kinds(records)["verify"] >= 2


def test_code_pair_greedy_and_seeds(code_pair, stdlib_prompts, recorded):
    """The real pair: greedy = HF generate, and at T = 1 the dynamic engine's tokens, through the recorded step."""
    target, draft, _ = code_pair
    for p in stdlib_prompts[:2]:
        ids = torch.tensor([p])
        ref = target.generate(ids, max_new_tokens=24, do_sample=False)
        kw = dict(draft=draft, method="speculative", max_new_tokens=24, draft_length=4, adaptive_draft=False)
        out = fastdecode.generate(target, ids, temperature=0, cache_implementation="static", compile="cudagraphs", **kw)
        assert torch.equal(out.sequences, ref[:, : out.sequences.shape[1]])
        a = fastdecode.generate(target, ids, temperature=1.0, seed=7, **kw).sequences
        b = fastdecode.generate(target, ids, temperature=1.0, seed=7, cache_implementation="static",
                                compile="cudagraphs", **kw).sequences
        assert torch.equal(a, b)
    assert _kinds(recorded)["draft_chain"] >= 1


def test_eos_inside_draft_and_budget_mid_draft(code_pair, stdlib_prompts, recorded):
    """EOS in the middle of an accepted draft, and max_new_tokens reached mid-draft, cut exactly as HF does."""
    target, draft, _ = code_pair
    ids = torch.tensor([stdlib_prompts[0]])
    full = target.generate(ids, max_new_tokens=40, do_sample=False)[0, ids.shape[1]:].tolist()
    eos = full[17]
    cut = full.index(eos) + 1
    for n_new in (40, 13):
        out = fastdecode.generate(target, ids, draft=draft, method="speculative", temperature=0, draft_length=6,
                                  adaptive_draft=False, max_new_tokens=n_new, eos_token_id=eos,
                                  cache_implementation="static", compile="cudagraphs")
        assert out.sequences[0, ids.shape[1]:].tolist() == full[: min(cut, n_new)]


def test_one_recording_per_length_and_settings(pair, recorded):
    """Each draft length g and sampling setting is recorded once, then replayed (here 4 calls of 2 settings)."""
    target, draft = pair
    for _ in range(2):
        for sampling in (dict(temperature=0), dict(temperature=1.0, seed=1)):
            fastdecode.generate(target, PROMPT, draft=draft, method="speculative", draft_length=3, adaptive_draft=False,
                                max_new_tokens=11, eos_token_id=[], cache_implementation="static",
                                compile="cudagraphs", **sampling)
    keys = [key for _, key in recorded if key[0] in ("draft_chain", "verify")]
    assert len(keys) == len(set(keys))
    assert {(k[0], k[1], k[2]) for k in keys} >= {("draft_chain", 3, 0.0), ("draft_chain", 3, 1.0),
                                                  ("verify", 3, 0.0), ("verify", 3, 1.0)}


class _Ops(TorchDispatchMode):
    """Counts the ops the host dispatches outside graph replays."""

    def __init__(self):
        super().__init__()
        self.n, self.inside = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.inside:
            self.n += 1
        return func(*args, **(kwargs or {}))


def _ops_per_step(monkeypatch, pair, record_steps: bool, temperature: float) -> float:
    if not record_steps:
        monkeypatch.setattr("fastdecode.decoding.static.recordable", lambda *a: False)
    ops = _Ops()
    replay = fake_graphs.FakeGraph.replay

    def counted(self):
        ops.inside += 1
        try:
            replay(self)
        finally:
            ops.inside -= 1
    monkeypatch.setattr(fake_graphs.FakeGraph, "replay", counted)
    target, draft = pair
    kw = dict(draft=draft, method="speculative", draft_length=4, adaptive_draft=False, max_new_tokens=31,
              temperature=temperature, seed=0, eos_token_id=[], cache_implementation="static", compile="cudagraphs")
    fastdecode.generate(target, PROMPT, **kw)   # recordings
    with ops:
        out = fastdecode.generate(target, PROMPT, **kw)
    return ops.n / out.stats.target_calls


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_step_queues_far_fewer_ops(pair, monkeypatch, temperature):
    """What makes it worth it on a GPU: host ops per step (g = 4), recorded against unrecorded."""
    fake_graphs.install(monkeypatch)
    recorded = _ops_per_step(monkeypatch, pair, True, temperature)
    with monkeypatch.context() as m:
        plain = _ops_per_step(m, pair, False, temperature)
    assert recorded < 0.6 * plain, (recorded, plain)


@pytest.mark.slow
def test_two_token_law(tiny_pair, law2, monkeypatch):
    fake_graphs.install(monkeypatch)
    counts = sample_law(*tiny_pair, LAW_PROMPT, 2, LAW_RUNS, max_new_tokens=3, temperature=1.0, method="speculative",
                        draft_length=2, adaptive_draft=False, cache_implementation="static", compile="cudagraphs")
    assert chi_square_pvalue(counts, law2) > ALPHA


@pytest.mark.slow
def test_broken_recorded_rule_fails(tiny_pair, law2, monkeypatch):
    """Accepting every draft in the recorded verification (the output then follows q) is caught. The runners
    kept on the models are dropped first: a graph recorded by an earlier test replays the rule it recorded."""
    from fastdecode.decoding.static_cache import drop_runners
    drop_runners(*tiny_pair)
    fake_graphs.install(monkeypatch)
    monkeypatch.setattr(static_step, "accepted_count", lambda u, px, qx: torch.full((), u.shape[0]))
    counts = sample_law(*tiny_pair, LAW_PROMPT, 2, LAW_RUNS, max_new_tokens=3, temperature=1.0, method="speculative",
                        draft_length=2, adaptive_draft=False, cache_implementation="static", compile="cudagraphs",
                        stop_when=caught(law2))
    assert chi_square_pvalue(counts, law2) < ALPHA


@pytest.mark.parametrize("model_type", ["mistral", "gemma2"])
def test_sliding_windows(recorded, model_type):
    """Models with their own window (the recorded masks by position) through the recorded step."""
    target = tiny_lm(model_type, 2, seed=1, sliding_window=4)
    draft = draft_of(target)
    prompt = torch.randint(0, target.config.vocab_size, (1, 6), generator=torch.Generator().manual_seed(0))
    ref = target.generate(prompt, max_new_tokens=14, do_sample=False)
    out = fastdecode.generate(target, prompt, draft=draft, method="speculative", draft_length=3, adaptive_draft=False,
                              temperature=0, max_new_tokens=14, eos_token_id=[], cache_implementation="static",
                              compile="cudagraphs")
    assert torch.equal(out.sequences, ref)
    assert _kinds(recorded)["draft_chain"] >= 1


def test_lambda_ring(pair, recorded):
    """Under Lambda attention (ring runners), the recorded step gives the dynamic Lambda engine's tokens."""
    target, draft = pair
    lam = fastdecode.LambdaAttention(num_global=2, window=6, max_rollback=8)
    kw = dict(draft=draft, method="speculative", draft_length=3, adaptive_draft=False, temperature=0,
              max_new_tokens=20, eos_token_id=[], lambda_attention=lam)
    ref = fastdecode.generate(target, PROMPT, **kw).sequences
    out = fastdecode.generate(target, PROMPT, cache_implementation="static", compile="cudagraphs", **kw).sequences
    assert torch.equal(out, ref)
    assert _kinds(recorded)["draft_chain"] >= 1


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("which", ["target", "draft"])
def test_nan_logits_raise(recorded, which, temperature):
    target = tiny_lm("llama", 2, seed=1)
    draft = draft_of(target)
    with torch.no_grad():
        (target if which == "target" else draft).lm_head.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or \\+inf logits"):
        fastdecode.generate(target, PROMPT, draft=draft, method="speculative", draft_length=3, adaptive_draft=False,
                            temperature=temperature, seed=0, max_new_tokens=6, eos_token_id=[],
                            cache_implementation="static", compile="cudagraphs")


@pytest.mark.parametrize("v_target,v_draft", [(512, 520), (520, 512)])
def test_padded_vocabularies(recorded, v_target, v_draft):
    """A pair whose output sizes differ (the draft's logits cut or padded to the target's width): the recorded
    chain draws its noise at that width; greedy = HF and seeds = the dynamic engine."""
    from end_to_end.test_vocab_padding import _pair
    target, draft = _pair(v_target, v_draft)
    prompt = torch.randint(0, 512, (1, 8), generator=torch.Generator().manual_seed(0))
    kw = dict(draft=draft, method="speculative", draft_length=3, adaptive_draft=False, max_new_tokens=16,
              eos_token_id=[])
    ref = target.generate(prompt, max_new_tokens=16, do_sample=False)
    assert torch.equal(fastdecode.generate(target, prompt, temperature=0, cache_implementation="static",
                                           compile="cudagraphs", **kw).sequences, ref)
    a = fastdecode.generate(target, prompt, temperature=1.0, seed=2, **kw).sequences
    b = fastdecode.generate(target, prompt, temperature=1.0, seed=2, cache_implementation="static",
                            compile="cudagraphs", **kw).sequences
    assert torch.equal(a, b)
    assert _kinds(recorded)["draft_chain"] >= 2


def test_self_draft(pair, recorded):
    """The target drafting for itself: one runner holds the draft chain, the target's forwards and the
    verification (distinct graph keys); greedy = HF, every draft accepted."""
    target, _ = pair
    out = fastdecode.generate(target, PROMPT, draft=target, method="speculative", draft_length=3, adaptive_draft=False,
                              temperature=0, max_new_tokens=17, eos_token_id=[], cache_implementation="static",
                              compile="cudagraphs")
    assert torch.equal(out.sequences, target.generate(PROMPT, max_new_tokens=17, do_sample=False))
    assert out.stats.accepted_tokens == out.stats.drafted_tokens


def test_prompt_lookup_model_drafts(pair, recorded, monkeypatch):
    """Prompt lookup's draft-model steps (where the text has no match) take the recorded step on CUDA, where
    the confidence stop is off; here the stop is turned off the same way: greedy = HF."""
    from fastdecode.decoding import static
    monkeypatch.setattr(static, "DEFAULT_CONFIDENCE_THRESHOLD", 0.0)
    target, draft = pair
    ids = torch.tensor([[1, 2, 3, 4, 5, 1, 2, 3]])
    kw = dict(draft=draft, method="prompt_lookup", max_new_tokens=20, eos_token_id=[], fallback="off")
    out = fastdecode.generate(target, ids, temperature=0, cache_implementation="static", compile="cudagraphs", **kw)
    assert torch.equal(out.sequences, target.generate(ids, max_new_tokens=20, do_sample=False))
    assert out.stats.extra["model_draft_steps"] > 0 and _kinds(recorded)["draft_chain"] >= 1


def _dense_rules(target, new: int) -> dict:
    """A repetition penalty, a suppressed token and a minimum length whose EOS is a token plain greedy decoding
    emits early (so that each rule changes the tokens)."""
    plain = target.generate(PROMPT, max_new_tokens=new, do_sample=False, eos_token_id=None)[0, 5:].tolist()
    return dict(repetition_penalty=1.4, suppress_tokens=[plain[1]], min_new_tokens=8, eos_token_id=plain[3])


@pytest.mark.parametrize("frozen", [False, True])
def test_dense_processors_run_inside_the_recorded_step(pair, monkeypatch, frozen):
    """The repetition penalty, one-token bans and the minimum length are applied inside the recorded draft chain
    and verification (from the committed text's id mask and new-token count, graph inputs): greedy = HF generate
    with the same settings, seeded samples = the dynamic engine's; frozen: replays of traced copies, Python
    values baked in. Other processors (an n-gram ban) leave the step unrecorded."""
    records = fake_graphs.install(monkeypatch, frozen=frozen)
    target, draft = pair
    rules = _dense_rules(target, 16)
    base = dict(draft=draft, method="speculative", max_new_tokens=16, draft_length=3, adaptive_draft=False, **rules)
    ref = target.generate(PROMPT, max_new_tokens=16, do_sample=False, **rules)
    out = fastdecode.generate(target, PROMPT, temperature=0, cache_implementation="static", compile="cudagraphs",
                              **base)
    assert torch.equal(out.sequences, ref)
    chains = _kinds(records)["draft_chain"]
    assert chains >= 1 and _kinds(records)["verify"] >= 1
    for seed in range(2):
        a = fastdecode.generate(target, PROMPT, temperature=1.0, seed=seed, **base).sequences
        b = fastdecode.generate(target, PROMPT, temperature=1.0, seed=seed, cache_implementation="static",
                                compile="cudagraphs", **base).sequences
        assert torch.equal(a, b), seed
    assert _kinds(records)["draft_chain"] > chains
    before = _kinds(records)["draft_chain"]
    out = fastdecode.generate(target, PROMPT, temperature=0, cache_implementation="static", compile="cudagraphs",
                              no_repeat_ngram_size=2, **{**base, "draft_length": 5})
    assert torch.equal(out.sequences, target.generate(PROMPT, max_new_tokens=16, do_sample=False,
                                                      no_repeat_ngram_size=2, **rules))
    assert _kinds(records)["draft_chain"] == before   # (g = 5 is a new length: it would have been recorded)
