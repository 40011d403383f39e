"""The static engine (cache_implementation="static"): same greedy tokens as HF and the dynamic engine, the
target's law when sampling, bucket edges, EOS inside an accepted draft, and clear refusals."""
import pytest
import torch

import fastdecode
from tiny_models import tiny_llama
from distribution import LAW_RUNS, caught, chi_square_pvalue, exact_law, sample_law
from fastdecode.decoding import static, static_step
from fastdecode.decoding.static import bucket, capacity_for

NEW = 40
PROMPT = [1, 2, 3, 4]
ALPHA = 1e-3


def test_padded_lengths():
    """Plain forwards are not padded; recorded ones go to their bucket; under inductor a length already compiled
    (up to the caller's bound) serves a shorter forward rather than a new compilation in the middle of a run."""
    class Run:
        def __init__(self, mode, lengths=(), records=True):
            self.mode, self.lengths, self.records = mode, set(lengths), records
    assert static.padded(Run("inductor", {8}, records=False), 3, 8) == 4   # the CPU: padding costs compute there
    assert static.padded(Run("eager"), 3, 8) == 3
    assert static.padded(Run("cudagraphs", {8}), 3, 8) == 4
    assert static.padded(Run("inductor"), 3, 8) == 4
    assert static.padded(Run("inductor", {8}), 3, 8) == 8
    assert static.padded(Run("inductor", {4, 8}), 3, 8) == 4
    assert static.padded(Run("inductor", {16}), 3, 8) == 4      # past the bound: the bucket
    assert static.padded(Run("inductor", {2, 8}), 1, 8) == 2


def test_buckets_and_capacity():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 17)] == [1, 2, 4, 4, 8, 8, 16, 32]
    assert capacity_for(100, 28, 1) == 256 and capacity_for(100, 29, 1) == 256 and capacity_for(100, 28, 1) % 128 == 0


@pytest.fixture(scope="module")
def hf_greedy(code_pair, stdlib_prompts):
    target = code_pair[0]
    return [target.generate(torch.tensor([p]), max_new_tokens=NEW, do_sample=False) for p in stdlib_prompts[:2]]


@pytest.mark.parametrize("kw", [
    dict(method="autoregressive"),
    dict(method="speculative", fallback="estimated"),   # adaptive length + confidence stop (estimated fallback:
                                                        # the same steps on both engines, whatever the timings)
    dict(method="speculative", draft_length=3, adaptive_draft=False),     # g + 1 = 4: exactly a bucket edge
    dict(method="speculative", draft_length=4, adaptive_draft=False),     # g + 1 = 5: padded to 8
    dict(method="speculative", draft_length=7, adaptive_draft=False, verifier="block"),
])
def test_greedy_equals_hf_and_dynamic(code_pair, stdlib_prompts, hf_greedy, kw):
    target, draft, _ = code_pair
    for i, ref in enumerate(hf_greedy):
        ids = torch.tensor([stdlib_prompts[i]])
        out = fastdecode.generate(target, ids, draft=draft, temperature=0, max_new_tokens=NEW,
                                  cache_implementation="static", **kw)
        assert torch.equal(out.sequences, ref), f"prompt {i} differs from HF greedy with {kw}"
        dyn = fastdecode.generate(target, ids, draft=draft, temperature=0, max_new_tokens=NEW, **kw)
        assert out.stats.accepted_tokens == dyn.stats.accepted_tokens
        assert out.stats.target_calls == dyn.stats.target_calls


def test_eos_inside_draft_and_budget_mid_draft(code_pair, stdlib_prompts):
    """EOS in the middle of an accepted draft and max_new_tokens reached mid-draft cut exactly as HF does."""
    target, draft, _ = code_pair
    ids = torch.tensor([stdlib_prompts[0]])
    full = target.generate(ids, max_new_tokens=NEW, do_sample=False)[0, ids.shape[1]:].tolist()
    eos = full[17]  # a token that first appears somewhere in the middle of the output
    cut = full.index(eos) + 1
    for n_new in (NEW, 13):
        out = fastdecode.generate(target, ids, draft=draft, method="speculative", temperature=0, draft_length=6,
                                  adaptive_draft=False, max_new_tokens=n_new, eos_token_id=eos,
                                  cache_implementation="static")
        assert out.sequences[0, ids.shape[1]:].tolist() == full[: min(cut, n_new)]


def test_reused_runner_gives_the_same_tokens(code_pair, stdlib_prompts):
    """A second call reuses the preallocated cache (stale slots from the first call must not leak in)."""
    target, draft, _ = code_pair
    a = torch.tensor([stdlib_prompts[1]])
    b = torch.tensor([stdlib_prompts[2][:20]])
    kw = dict(draft=draft, method="speculative", temperature=0, max_new_tokens=24, cache_implementation="static")
    first = fastdecode.generate(target, b, **kw).sequences
    fastdecode.generate(target, a, **kw)
    assert torch.equal(fastdecode.generate(target, b, **kw).sequences, first)


@pytest.fixture(scope="module")
def law2(tiny_pair):
    return exact_law(tiny_pair[0], PROMPT, 2)


RUNS = LAW_RUNS


@pytest.mark.slow
@pytest.mark.parametrize("verifier", ["token", "block"])
def test_two_token_law(tiny_pair, law2, verifier):
    counts = sample_law(*tiny_pair, PROMPT, 2, RUNS, max_new_tokens=3, temperature=1.0, method="speculative",
                        draft_length=2, adaptive_draft=False, verifier=verifier, cache_implementation="static")
    assert chi_square_pvalue(counts, law2) > ALPHA


def test_sampled_autoregressive_equals_dynamic(tiny_pair):
    """Plain sampling draws the same noise in the same order on both engines: same seed, same tokens."""
    target = tiny_pair[0]
    for seed in range(3):
        kw = dict(method="autoregressive", max_new_tokens=12, seed=seed, eos_token_id=[], top_k=4)
        a = fastdecode.generate(target, torch.tensor([PROMPT]), **kw).sequences
        assert torch.equal(a, fastdecode.generate(target, torch.tensor([PROMPT]), cache_implementation="static",
                                                  **kw).sequences)


@pytest.mark.parametrize("kw", [dict(draft_length=1, adaptive_draft=False), dict(draft_length=3, adaptive_draft=False),
                                dict(adaptive_draft=True, fallback="off"), dict(adaptive_draft=True, fallback="estimated")])
def test_sampled_speculative_equals_dynamic(tiny_pair, kw):
    """The static token verifier draws the dynamic one's noise in the same order (the uniforms of the tests,
    then one exponential row for the residual or the bonus): same seed, same tokens on both engines."""
    target, draft = tiny_pair
    for seed in range(4):
        args = dict(draft=draft, method="speculative", max_new_tokens=16, seed=seed, eos_token_id=[], **kw)
        a = fastdecode.generate(target, torch.tensor([PROMPT]), **args).sequences
        assert torch.equal(a, fastdecode.generate(target, torch.tensor([PROMPT]), cache_implementation="static",
                                                  **args).sequences)


@pytest.mark.slow
@pytest.mark.parametrize("broken", ["accept every draft", "rejected draft instead of a residual draw"])
def test_broken_static_rule_fails(tiny_pair, law2, monkeypatch, broken):
    """Broken verifiers must be caught by the same test: accepting every draft (the output follows q), or
    emitting the rejected draft again instead of a residual draw."""
    if broken == "accept every draft":
        monkeypatch.setattr(static_step, "accepted_count", lambda u, px, qx: torch.tensor(u.shape[0]))
    else:
        monkeypatch.setattr(static_step.kernels, "verify_speculative",
                            lambda p, q, drafts, u, noise: (drafts[:, 0], torch.zeros(drafts.shape[0], dtype=torch.long)))
    counts = sample_law(*tiny_pair, PROMPT, 2, RUNS, max_new_tokens=3, temperature=1.0, method="speculative",
                        draft_length=2, adaptive_draft=False, cache_implementation="static", stop_when=caught(law2))
    assert chi_square_pvalue(counts, law2) < ALPHA


def test_seed_fixes_the_tokens(tiny_pair):
    target, draft = tiny_pair
    kw = dict(draft=draft, method="speculative", max_new_tokens=12, cache_implementation="static", eos_token_id=[])
    a = fastdecode.generate(target, torch.tensor([PROMPT]), seed=3, **kw).sequences
    assert torch.equal(a, fastdecode.generate(target, torch.tensor([PROMPT]), seed=3, **kw).sequences)


@pytest.mark.slow
def test_compile_on_cpu_through_inductor(tiny_pair):
    """compile=True runs the recorded steps through torch.compile (inductor) on the CPU, same greedy tokens."""
    target, draft = tiny_llama(5, vocab=32), tiny_llama(6, vocab=32, layers=1)
    ids = torch.tensor([PROMPT])
    kw = dict(draft=draft, temperature=0, max_new_tokens=10, eos_token_id=[], method="speculative", draft_length=3,
              adaptive_draft=False)
    ref = fastdecode.generate(target, ids, **kw).sequences
    out = fastdecode.generate(target, ids, cache_implementation="static", compile=True, **kw).sequences
    assert torch.equal(out, ref)


def test_refusals(tiny_pair):
    target, _ = tiny_pair
    ids = torch.tensor([PROMPT])
    with pytest.raises(ValueError, match="cache_implementation must be one of"):
        fastdecode.generate(target, ids, cache_implementation="paged")
    with pytest.raises(ValueError, match="compile= needs cache_implementation='static'"):
        fastdecode.generate(target, ids, compile=True)
    with pytest.raises(ValueError, match="compile must be"):
        fastdecode.generate(target, ids, cache_implementation="static", compile="fast")
    with pytest.raises(ValueError, match="needs a model on a CUDA device"):
        fastdecode.generate(target, ids, cache_implementation="static", compile="cudagraphs")


@pytest.mark.slow
def test_compiled_forwards_recorded_as_graphs(monkeypatch):
    """compile=True on CUDA records each compiled forward as a graph of its own (no CUDA-graph trees): the CPU
    stand-in records the compiled chain and tree forwards and replays them, same greedy tokens as the
    dynamic engine for every recorded method."""
    import fake_graphs
    records = fake_graphs.install(monkeypatch)
    target, draft = tiny_llama(5, vocab=32), tiny_llama(6, vocab=32, layers=1)
    ids = torch.tensor([PROMPT])
    for kw in (dict(method="speculative", draft_length=3, adaptive_draft=False), dict(method="autoregressive"),
               dict(method="multi_draft", num_drafts=2, draft_length=2)):
        common = dict(draft=draft, temperature=0, max_new_tokens=10, eos_token_id=[], **kw)
        ref = fastdecode.generate(target, ids, **common).sequences
        out = fastdecode.generate(target, ids, cache_implementation="static", compile=True, **common).sequences
        assert torch.equal(out, ref), kw
        if kw["method"] == "speculative":   # the last step's draft, cut short by the budget, reused the 4-token forward
            assert target.__dict__["_fastdecode_static"].lengths == {4}
    assert {key[0] for _, key in records} == {"chain", "tree", "draft_chain", "verify"}


def test_compile_refuses_a_forward_it_cannot_capture():
    """A model whose forward reads the device (a graph break) gets a clear ValueError from compile=True, naming
    the alternative, not dynamo's traceback; without compile it decodes."""
    target = tiny_llama(5, vocab=32)
    mlp = target.model.layers[0].mlp
    forward = mlp.forward
    mlp.forward = lambda x: forward(x) if float(x.abs().sum()) >= 0 else forward(-x)
    ids = torch.tensor([PROMPT])
    with pytest.raises(ValueError, match="could not compile this model's forward as one graph.*compile=None"):
        fastdecode.generate(target, ids, max_new_tokens=4, cache_implementation="static", compile=True)
    assert fastdecode.generate(target, ids, max_new_tokens=4, eos_token_id=[],
                               cache_implementation="static").stats.new_tokens == 4
