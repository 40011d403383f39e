"""Batches on the static engine with recorded forwards (compile=True: inductor on the CPU; "cudagraphs" through a
CPU stand-in for the CUDA graph), multi_draft included: the batch and step widths padded to buckets, finished rows left as inert
padding rows until the rest fit half the bucket. Greedy output equals HF ``generate`` on the same padded batch
and the eager static engine (per-row counts too), rows finishing at different steps; a second call records
nothing new; a seed gives the eager engine's tokens."""
import pytest
import torch

import fastdecode
import fake_graphs
from batches import eos_for, left_pad, random_prompts, tiny_pair

NEW = 12
LENS = [5, 9, 3]          # batch 3: bucket 4 (one padding row), then 2 and 1 as rows finish
# (fallback="off": the engines are compared step by step, which plain steps chosen by timings would not allow)
CONFIGS = [
    ("autoregressive", {}),
    ("speculative", dict(fallback="off")),                         # token verifier, adaptive length
    ("speculative", dict(verifier="block", fallback="off")),       # block verifier, adaptive length
    ("speculative", dict(adaptive_draft=False, draft_length=3)),   # fixed length
    ("speculative", dict(adaptive_draft=False, draft_length=2, verifier="block")),
    ("prompt_lookup", dict(prompt_lookup_num_tokens=3, fallback="off")),
    ("multi_draft", dict(num_drafts=2, draft_length=3)),
    ("multi_draft", dict(num_drafts=3, adaptive_draft=True, verifier="spectr")),
    ("prompt_lookup", dict(prompt_lookup_num_tokens=3, fallback="off", with_draft=True)),   # + model drafts
]


@pytest.fixture(scope="module")
def pair():
    return tiny_pair()


@pytest.fixture(scope="module")
def batch():
    prompts = random_prompts(LENS)
    prompts[0] = prompts[0][:2] * 2 + prompts[0][:1]   # something for prompt lookup to copy
    return left_pad(prompts)


@pytest.fixture(scope="module")
def eos(pair, batch):
    """A token row 0 produces early and the other rows later or never: rows finish at different steps."""
    return eos_for(pair[0], batch, NEW, row=0, at=2)


def _run(pair, ids, mask, method, kw, **extra):
    target, draft = pair
    kw = dict(kw)
    with_draft = kw.pop("with_draft", method in ("speculative", "multi_draft"))
    extra = {"max_new_tokens": NEW, **extra}
    extra = {"cache_implementation": "static", **extra}
    return fastdecode.generate(target, ids, attention_mask=mask, draft=draft if with_draft else None,
                               method=method, pad_token_id=0, **kw, **extra)


def _check_same(pair, batch, eos, method, kw, with_eos, **recorded):
    target, _ = pair
    ids, mask = batch
    eos_ids = [eos] if with_eos else []
    hf = target.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0,
                         eos_token_id=eos if with_eos else None)
    out = _run(pair, ids, mask, method, kw, temperature=0, eos_token_id=eos_ids, **recorded)
    eager = _run(pair, ids, mask, method, kw, temperature=0, eos_token_id=eos_ids, compile=False)
    assert torch.equal(out.sequences, hf)
    assert torch.equal(eager.sequences, hf)
    assert out.stats.extra["per_row"] == eager.stats.extra["per_row"]   # the same drafts made and accepted
    if with_eos:
        assert len({r["new_tokens"] for r in out.stats.extra["per_row"]}) > 1   # rows finished at different steps


# ------------------------------------------------------------------- "cudagraphs": the recording path on the CPU
@pytest.fixture
def fake_cudagraphs(monkeypatch):
    """compile="cudagraphs" on the CPU (``fake_graphs``). Returns the list of (runner id, graph key)."""
    return fake_graphs.install(monkeypatch)


@pytest.fixture
def fresh(pair):
    """No batch runner left on the models by an earlier test (each test records its own graphs)."""
    for m in pair:
        for k in [k for k in m.__dict__ if k.startswith("_fastdecode_static")]:
            del m.__dict__[k]
    yield
    for m in pair:
        for k in [k for k in m.__dict__ if k.startswith("_fastdecode_static")]:
            del m.__dict__[k]


@pytest.mark.parametrize("method,kw", [CONFIGS[0], CONFIGS[1], CONFIGS[4], CONFIGS[5], CONFIGS[6], CONFIGS[7],
                                       CONFIGS[8]])
def test_cudagraphs_path_greedy_equals_hf_and_eager(pair, batch, eos, fake_cudagraphs, fresh, method, kw):
    _check_same(pair, batch, eos, method, kw, True, compile="cudagraphs")
    shapes = {k[1] for _, k in fake_cudagraphs}                       # (bucketed B, bucketed n) of each graph
    assert all(k[0] == "batch" for _, k in fake_cudagraphs)
    assert all(b & (b - 1) == 0 and n & (n - 1) == 0 for b, n in shapes)   # powers of two only
    assert {b for b, _ in shapes} >= {4, 2}                           # rows finished: re-bucketed to 2
    assert len(fake_cudagraphs) == len(set(fake_cudagraphs))          # each graph recorded once per runner
    before = len(fake_cudagraphs)
    _check_same(pair, batch, eos, method, kw, True, compile="cudagraphs")   # same buckets: nothing recorded again
    assert len(fake_cudagraphs) == before


def _ending(target, ids, mask, at: dict[int, int]):
    """EOS tokens that end row r after its at[r]-th new token (taken from HF's free greedy run), and HF's greedy
    output with them."""
    L = ids.shape[1]
    free = target.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    eos = [int(free[r, L + i]) for r, i in at.items()]
    return eos, target.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0,
                                eos_token_id=eos)


@pytest.mark.parametrize("method,kw", [CONFIGS[3], CONFIGS[6]])
def test_cudagraphs_path_self_draft(pair, batch, fake_cudagraphs, fresh, method, kw):
    """The target drafting for itself, rows ending at three different steps (two EOS tokens), down to a batch
    of one: its draft and target caches stay apart in every bucket, and apart from the single-row engine's."""
    target, _ = pair
    ids, mask = batch
    eos, hf = _ending(target, ids, mask, {0: 2, 1: 6})
    run = dict(temperature=0, eos_token_id=eos)
    out = _run((target, target), ids, mask, method, kw, compile="cudagraphs", **run)
    eager = _run((target, target), ids, mask, method, kw, compile=False, **run)
    assert torch.equal(out.sequences, hf) and torch.equal(eager.sequences, hf)
    assert out.stats.extra["per_row"] == eager.stats.extra["per_row"]
    assert len({r["steps"] for r in out.stats.extra["per_row"]}) == 3
    slots = {k for k in target.__dict__ if k.startswith("_fastdecode_static")}
    assert slots == {f"_fastdecode_static_batch_{role}{b}" for role in ("target", "draft") for b in (4, 2, 1)}


@pytest.mark.parametrize("method,kw", [CONFIGS[1], CONFIGS[7]])
def test_cudagraphs_path_seed_gives_the_eager_tokens(pair, batch, fake_cudagraphs, fresh, method, kw):
    ids, mask = batch
    run = dict(temperature=1.0, seed=5, eos_token_id=[])
    out = _run(pair, ids, mask, method, kw, compile="cudagraphs", **run)
    eager = _run(pair, ids, mask, method, kw, compile=False, **run)
    assert fake_cudagraphs and torch.equal(out.sequences, eager.sequences)


# ---------------------------------------------------------------------------------- compile=True (inductor)
# Compiling is slow on the CPU (tens of seconds per graph when the inductor cache is cold): the cases below keep
# to a few graphs; the bucketing logic is covered by the "cudagraphs" cases above, on the same code path.
@pytest.mark.slow
def test_inductor_autoregressive_reuse_and_seed(pair, batch):
    """One graph (bucketed B 4, n 1: rows of different lengths, one padding row, all end at the budget):
    greedy = HF = eager, a second call compiles nothing, a seed gives the eager engine's tokens."""
    from torch._dynamo.utils import counters

    target, _ = pair
    ids, mask = batch
    hf = target.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    out = _run(pair, ids, mask, "autoregressive", {}, temperature=0, eos_token_id=[], compile=True)
    assert torch.equal(out.sequences, hf)
    graphs = counters["stats"]["unique_graphs"]
    kw = dict(temperature=1.0, seed=2, eos_token_id=[])
    sampled = _run(pair, ids, mask, "autoregressive", {}, compile=True, **kw)
    assert counters["stats"]["unique_graphs"] == graphs          # the same buckets: no new graph
    eager = _run(pair, ids, mask, "autoregressive", {}, compile=False, **kw)
    assert torch.equal(sampled.sequences, eager.sequences)


@pytest.mark.slow
def test_inductor_speculative_ragged(pair, batch):
    """Fixed length 1 with a weak draft, 3 new tokens: ragged acceptance, one padding row, rows ending at
    different steps (the last one re-bucketed from 4 rows to 1); three graphs. Greedy = HF = eager, same
    per-row counts."""
    target, _ = pair
    ids, mask = batch
    kw = dict(adaptive_draft=False, draft_length=1)
    run = dict(temperature=0, eos_token_id=[], max_new_tokens=3)
    hf = target.generate(ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=0)
    out = _run(pair, ids, mask, "speculative", kw, compile=True, **run)
    eager = _run(pair, ids, mask, "speculative", kw, compile=False, **run)
    assert torch.equal(out.sequences, hf) and torch.equal(eager.sequences, hf)
    assert out.stats.extra["per_row"] == eager.stats.extra["per_row"]
    assert 0 < out.stats.accepted_tokens < out.stats.drafted_tokens
    assert len({r["steps"] for r in out.stats.extra["per_row"]}) > 1   # rows ended at different steps


@pytest.mark.parametrize("method,kw", [CONFIGS[0], CONFIGS[5]])
def test_cudagraphs_path_rows_fewer_than_their_smaller_bucket(pair, fake_cudagraphs, fresh, method, kw):
    """A batch of 5 (bucket 8) where two rows end at the same early step: the 3 left move to the runner of bucket
    4, whose cache must be allocated for its 4 rows (3 live + 1 inert), not for the 3 moved (a shape error
    before)."""
    target, _ = pair
    ids, mask = left_pad(random_prompts([6, 11, 3, 9, 8], seed=4))
    eos, hf = _ending(target, ids, mask, {0: 1, 1: 1})
    run = dict(temperature=0, eos_token_id=eos)
    out = _run(pair, ids, mask, method, kw, compile="cudagraphs", **run)
    assert torch.equal(out.sequences, hf)
    lengths = sorted(r["new_tokens"] for r in out.stats.extra["per_row"])
    assert lengths[0] == lengths[1] < lengths[2]                     # two rows ended before the other three
    assert {k[1][0] for _, k in fake_cudagraphs} >= {8, 4}           # recorded at 8 rows, then at 4


# ------------------------------------------------------------------------ compaction: caches sized for the text
@pytest.fixture
def tight(monkeypatch):
    """The batch caches sized with no room for invalid columns (the text and one step), and compacted before
    every step (a roomier cache compacts only when a step would not fit); returns the (columns before, after) of
    each compaction that dropped columns."""
    from fastdecode.decoding import batched, batched_cache, batched_tree

    monkeypatch.setattr(batched, "static_capacity", lambda width, new, step: width + new + step)
    monkeypatch.setattr(batched_tree, "static_capacity", lambda width, new, step: width + new + step)
    done = []
    for cls in (batched_cache._Cache, batched_cache._SlotCache):   # (the dynamic engine's and the static one's)
        def always(self, n, real=cls.make_room):
            before = self.columns
            self.compact()
            if self.columns < before:
                done.append((before, self.columns))
            real(self, n)   # (compacts nothing more: what is left fits)
        monkeypatch.setattr(cls, "make_room", always)
    return done


@pytest.mark.parametrize("compile", [False, "cudagraphs", "dynamic engine"])
@pytest.mark.parametrize("method,kw", [CONFIGS[3], CONFIGS[4], CONFIGS[5], CONFIGS[6], CONFIGS[8]])
def test_compacted_caches_keep_hf_greedy(pair, batch, tight, fake_cudagraphs, fresh, method, kw, compile):
    """Rows that reject drafts leave invalid columns while other rows keep theirs; a cache that runs out of room
    moves each row's valid columns together (left-padded) and drops the rest. Greedy output still equals HF's
    (and per-row counts the roomy eager engine's), rows ending at different steps, compacted several times."""
    target, _ = pair
    ids, mask = batch
    new = 24
    eos = eos_for(target, batch, new, row=2, at=18)
    hf = target.generate(ids, attention_mask=mask, max_new_tokens=new, do_sample=False, pad_token_id=0,
                         eos_token_id=eos)
    engine = dict(cache_implementation="dynamic") if compile == "dynamic engine" else dict(compile=compile)
    out = _run(pair, ids, mask, method, kw, temperature=0, eos_token_id=[eos], max_new_tokens=new, **engine)
    assert torch.equal(out.sequences, hf)
    assert len(tight) >= 2
    assert len({r["new_tokens"] for r in out.stats.extra["per_row"]}) > 1


def test_compacted_windowed_model_keeps_hf_greedy(tight):
    """A sliding-window model (its masks built from each column's position, which moves with the column)."""
    from tiny_models import draft_of, tiny_lm

    target = tiny_lm("mistral", 2, seed=1, sliding_window=4)
    draft = draft_of(target)
    ids, mask = left_pad(random_prompts([7, 3, 10], seed=6))
    hf = target.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False, pad_token_id=0)
    for engine in ("static", "dynamic"):
        for method, kw in (("speculative", dict(adaptive_draft=False, draft_length=3)),
                           ("multi_draft", dict(num_drafts=2, draft_length=3))):
            out = fastdecode.generate(target, ids, attention_mask=mask, draft=draft, method=method, temperature=0,
                                      max_new_tokens=20, eos_token_id=[], pad_token_id=0,
                                      cache_implementation=engine, **kw)
            assert torch.equal(out.sequences, hf), (engine, method)
    assert tight


def test_long_budget_keeps_the_cache_small():
    """max_new_tokens = 2000 with drafts of up to 16: the caches hold the text and some room (they held
    max_new_tokens x 18 columns before, 36 066 for these prompts), and the call stays quick."""
    from fastdecode.decoding import batched_cache

    target, draft = tiny_pair()
    ids, mask = left_pad(random_prompts([5, 9, 3]))
    sizes = []
    real = batched_cache._SlotCache.__init__

    def spy(self, model, batch, device, capacity, *a, **k):
        sizes.append(capacity)
        real(self, model, batch, device, capacity, *a, **k)
    try:
        batched_cache._SlotCache.__init__ = spy
        out = fastdecode.generate(target, ids, attention_mask=mask, draft=draft, method="speculative",
                                  temperature=0, max_new_tokens=2000, eos_token_id=[], pad_token_id=0,
                                  cache_implementation="static", max_length=None,
                                  stopping_criteria=[lambda i, s: torch.tensor([i.shape[1] >= 16])])
    finally:
        batched_cache._SlotCache.__init__ = real
    assert sizes and max(sizes) <= 9 + 2000 + 34 + 4 * 34 + 2009 // 4
    assert out.sequences.shape[1] <= 9 + 16


@pytest.mark.parametrize("engine", ["dynamic", "static"])
def test_make_room_compacts_a_fragmented_cache(engine):
    """The trigger itself (the tests above force a compaction at every step): rows that keep their drafts in turn
    leave each row mostly invalid columns; the dynamic cache compacts once they outnumber the valid ones, the
    static one once a step would not fit. A compacted cache gives the logits of the same cache left as it was."""
    from fastdecode.decoding.batched_cache import _Cache, _SlotCache

    target, _ = tiny_pair()
    g = torch.Generator().manual_seed(0)

    def build():
        return (_Cache(target, 3, torch.device("cpu")) if engine == "dynamic" else
                _SlotCache(target, 3, torch.device("cpu"), capacity=96))
    caches = [build(), build()]
    with torch.no_grad():
        prompt = torch.randint(1, 500, (3, 2), generator=g)
        for c in caches:
            c.forward(prompt, torch.ones_like(prompt), 1)
        for step in range(8):   # 8 columns a step (66 in all: past the dynamic cache's first look at 64); row step % 3 keeps them all, the others none
            block = torch.randint(1, 500, (3, 8), generator=g)
            keep = torch.tensor([8 if r == step % 3 else 0 for r in range(3)])
            for c in caches:
                first = c.columns
                c.forward(block, torch.ones_like(block), 1)
                c.invalidate(first, keep)
                c.trim()
        before = caches[0].columns
        assert before > 2 * int(caches[0].valid.max())
        caches[0].make_room(40 if engine == "static" else 1)   # (static: 66 + 40 > 96)
        assert caches[0].columns == int(caches[0].valid.max()) < before
        assert caches[1].columns == before
        nxt = torch.randint(1, 500, (3, 1), generator=g)
        a, b = (c.forward(nxt, torch.ones_like(nxt), 1) for c in caches)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
