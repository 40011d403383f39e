"""Batched prompt lookup (B > 1, left padding): each row copies from its own text through its own n-gram index
and keeps its own adaptive length. Greedy output equals HF ``generate`` on the same padded batch and each prompt
run alone (per-row drafted / accepted counts too), rows draft different lengths (0 included) in the same step,
the target's law per row, and the errors."""
import pytest
import torch

import fastdecode
from distribution import CHECK_EVERY, LAW_RUNS, caught, chi_square_pvalue, exact_law
from batches import accept_all, eos_for, left_pad, tiny_pair
from tiny_models import draft_of, tiny_lm

NEW = 24
REP = [5, 9, 13, 7, 5, 9, 13, 7, 5, 9, 13, 7, 5, 9, 40, 41, 5, 9]
# a long repetitive row, a short one, a cut of the first, and one with nothing to copy at first
PROMPTS = [REP, [3, 4, 5, 3, 4], REP[:7], [11, 12, 13, 14, 15, 16, 17, 18, 19]]
# (fallback="off": the per-row counts equal a row alone only when no step is made plain by measured timings)
CONFIGS = [
    dict(fallback="off"),                                       # token verifier, adaptive length
    dict(verifier="block", fallback="off"),
    dict(adaptive_draft=False, prompt_lookup_num_tokens=5),     # fixed length
    dict(prompt_lookup_num_tokens=3, max_matching_ngram_size=3, min_matching_ngram_size=2,   # rarer matches
         fallback="off"),
]


@pytest.fixture(scope="module")
def target():
    return tiny_lm("llama", layers=2, seed=0)


@pytest.fixture(scope="module")
def batch():
    return left_pad(PROMPTS)


@pytest.fixture(scope="module")
def eos(target, batch):
    """A token row 1 emits early and the other rows later or never: rows finish at different steps."""
    return eos_for(target, batch, NEW, row=1, at=4)


def _lens_recorder(monkeypatch):
    """Wrap both batched verifiers to record each step's per-row chain lengths."""
    from fastdecode.decoding import batched

    seen = []
    for name in ("_verify_token", "_verify_block"):
        orig = getattr(batched, name)

        def wrapped(p, q, drafts, lens, generator, _orig=orig):
            seen.append(lens.tolist())
            return _orig(p, q, drafts, lens, generator)
        monkeypatch.setattr(batched, name, wrapped)
    return seen


@pytest.mark.parametrize("kw", CONFIGS)
@pytest.mark.parametrize("with_eos", [False, True])
@pytest.mark.parametrize("engine", ["dynamic", "static"])
def test_greedy_equals_hf_and_alone(target, batch, eos, kw, with_eos, engine, monkeypatch):
    ids, mask = batch
    L = ids.shape[1]
    eos_ids = [eos] if with_eos else []
    hf = target.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0,
                         eos_token_id=eos if with_eos else None)
    seen = _lens_recorder(monkeypatch)
    out = fastdecode.generate(target, ids, attention_mask=mask, method="prompt_lookup", max_new_tokens=NEW,
                              temperature=0, eos_token_id=eos_ids, pad_token_id=0, cache_implementation=engine, **kw)
    monkeypatch.undo()
    assert torch.equal(out.sequences, hf)
    # ragged drafts: some step had a row drafting nothing beside a row drafting; lengths vary (own policies)
    assert any(0 in s and max(s) > 0 for s in seen)
    assert len({x for s in seen for x in s if x}) > 1 or kw.get("adaptive_draft") is False
    per_row = out.stats.extra["per_row"]
    if with_eos:
        assert len({r["new_tokens"] for r in per_row}) > 1
    ngram_steps = 0
    for r, prompt in enumerate(PROMPTS):
        alone = fastdecode.generate(target, torch.tensor([prompt]), method="prompt_lookup", max_new_tokens=NEW,
                                    temperature=0, eos_token_id=eos_ids, cache_implementation=engine, **kw)
        new = alone.sequences[0, len(prompt):]
        assert torch.equal(out.sequences[r, L : L + new.shape[0]], new)
        assert (out.sequences[r, L + new.shape[0]:] == 0).all()
        # per row the same drafts are made and accepted as alone: own index, own adaptive length
        assert per_row[r]["new_tokens"] == alone.stats.new_tokens
        assert per_row[r]["drafted"] == alone.stats.drafted_tokens
        assert per_row[r]["accepted"] == alone.stats.accepted_tokens
        ngram_steps += alone.stats.extra.get("ngram_draft_steps", 0)   # (the single-row static engine has no count)
    if engine == "dynamic":
        assert out.stats.extra["ngram_draft_steps"] == ngram_steps
    assert out.stats.draft_calls == 0 and out.stats.accepted_tokens > 0
    # one target forward per batch step; the batch runs as long as its slowest row
    assert out.stats.target_calls == out.stats.extra["batch_steps"] == max(r["steps"] for r in per_row)


def test_index_ignores_padding(target):
    """The pad id occurs in the real text of row 0: row 1's padding must not give it matches (alone equality)."""
    prompts = [[0, 7, 0, 7, 0, 7, 0], [7, 0]]
    ids, mask = left_pad(prompts)
    out = fastdecode.generate(target, ids, attention_mask=mask, method="prompt_lookup", max_new_tokens=6,
                              temperature=0, eos_token_id=[], pad_token_id=0, fallback="off")
    for r, p in enumerate(prompts):
        alone = fastdecode.generate(target, torch.tensor([p]), method="prompt_lookup", max_new_tokens=6,
                                    temperature=0, eos_token_id=[], fallback="off")
        assert torch.equal(out.sequences[r, ids.shape[1]:], alone.sequences[0, len(p):])
        assert out.stats.extra["per_row"][r]["drafted"] == alone.stats.drafted_tokens


@pytest.mark.parametrize("verifier", ["token", "block"])
@pytest.mark.parametrize("engine", ["dynamic", "static"])
def test_sampled_runs_budget_and_seed(target, batch, verifier, engine):
    ids, mask = batch
    kw = dict(attention_mask=mask, method="prompt_lookup", max_new_tokens=9, temperature=0.8, seed=4,
              eos_token_id=[], pad_token_id=0, verifier=verifier, cache_implementation=engine)
    a, b = (fastdecode.generate(target, ids, **kw) for _ in range(2))
    assert torch.equal(a.sequences, b.sequences) and a.sequences.shape == (len(PROMPTS), ids.shape[1] + 9)
    assert all(r["new_tokens"] == 9 for r in a.stats.extra["per_row"])


def test_errors(target, batch):
    ids, mask = batch
    for kw, match in ((dict(draft_length=3), "does not apply to method 'prompt_lookup'"),
                      (dict(pad_token_id=None), "pad_token_id"),
                      (dict(attention_mask=mask.flip(-1)), "right padding")):
        args = {**dict(attention_mask=mask, method="prompt_lookup", max_new_tokens=2, pad_token_id=0), **kw}
        with pytest.raises(ValueError, match=match):
            fastdecode.generate(target, ids, **args)


# ------------------------------------------------------------- with a draft model for the rows without a match
@pytest.mark.parametrize("kw", [dict(fallback="off"), dict(min_matching_ngram_size=2, verifier="block", fallback="off"),
                                dict(adaptive_draft=False, prompt_lookup_num_tokens=4)])
@pytest.mark.parametrize("with_eos,cache", [(False, "dynamic"), (True, "dynamic"), (True, "static")])
def test_draft_model_fallback_greedy_equals_hf_and_alone(target, batch, eos, kw, with_eos, cache):
    """Rows without an n-gram match draft with the model (its own length and confidence stop), rows with one
    copy, in the same step; per row the same drafts and acceptances as alone (on either engine)."""
    ids, mask = batch
    L = ids.shape[1]
    draft = draft_of(target)
    eos_ids = [eos] if with_eos else []
    hf = target.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0,
                         eos_token_id=eos if with_eos else None)
    out = fastdecode.generate(target, ids, attention_mask=mask, draft=draft, method="prompt_lookup",
                              max_new_tokens=NEW, temperature=0, eos_token_id=eos_ids, pad_token_id=0,
                              cache_implementation=cache, **kw)
    assert torch.equal(out.sequences, hf)
    per_row = out.stats.extra["per_row"]
    steps = dict(ngram_draft_steps=0, model_draft_steps=0)
    for r, prompt in enumerate(PROMPTS):
        alone = fastdecode.generate(target, torch.tensor([prompt]), draft=draft, method="prompt_lookup",
                                    max_new_tokens=NEW, temperature=0, eos_token_id=eos_ids,
                                    cache_implementation=cache, **kw)
        new = alone.sequences[0, len(prompt):]
        assert torch.equal(out.sequences[r, L : L + new.shape[0]], new)
        assert per_row[r]["drafted"] == alone.stats.drafted_tokens
        assert per_row[r]["accepted"] == alone.stats.accepted_tokens
        for k in steps:
            steps[k] += alone.stats.extra[k]
    for k, v in steps.items():
        assert out.stats.extra[k] == v > 0, k   # both sources drafted
    assert 0 < out.stats.draft_calls


@pytest.mark.parametrize("verifier", ["token", "block"])
def test_draft_model_fallback_sampled_runs(target, batch, verifier):
    ids, mask = batch
    kw = dict(attention_mask=mask, draft=draft_of(target), method="prompt_lookup", max_new_tokens=9,
              temperature=0.8, seed=2, eos_token_id=[], pad_token_id=0, verifier=verifier)
    a, b = (fastdecode.generate(target, ids, **kw) for _ in range(2))
    assert torch.equal(a.sequences, b.sequences) and a.stats.extra["model_draft_steps"] > 0


# ---------------------------------------------------------------------------------------------- sampling law
LAW_PROMPTS = [[1, 2, 3, 1, 2, 3, 1, 2], [4, 5, 4], [1, 2, 3, 1, 2, 3, 1, 2], [0, 5]]  # rows 0 and 2 share a prompt
RUNS = LAW_RUNS
ALPHA = 1e-3


def _law_counts(tiny_pair, runs, prompts=LAW_PROMPTS, stop_when=None, **kw):
    target = tiny_pair[0]
    ids, mask = left_pad(prompts)
    L = ids.shape[1]
    counts_a, counts_b = {}, {}
    drafted = model_steps = 0
    for seed in range(runs):
        out = fastdecode.generate(target, ids, attention_mask=mask, method="prompt_lookup", max_new_tokens=3,
                                  temperature=1.0, seed=seed, eos_token_id=[], pad_token_id=0, **kw)
        for r, counts in ((0, counts_a), (2, counts_a), (1, counts_b)):
            key = tuple(out.sequences[r, L : L + 2].tolist())
            counts[key] = counts.get(key, 0) + 1
        drafted += out.stats.drafted_tokens
        model_steps += out.stats.extra["model_draft_steps"]
        if stop_when is not None and (seed + 1) % CHECK_EVERY == 0 and stop_when(counts_a, counts_b):
            break
    assert drafted > 0 and (model_steps > 0) == (kw.get("draft") is not None)
    return counts_a, counts_b


@pytest.fixture(scope="module")
def laws(tiny_pair):
    return exact_law(tiny_pair[0], LAW_PROMPTS[0], 2), exact_law(tiny_pair[0], LAW_PROMPTS[1], 2)


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(), dict(verifier="block"), dict(cache_implementation="static")])
def test_each_row_keeps_target_law(tiny_pair, laws, kw):
    a, b = _law_counts(tiny_pair, RUNS, **kw)
    assert chi_square_pvalue(a, laws[0]) > ALPHA
    assert chi_square_pvalue(b, laws[1]) > ALPHA


# row 0 copies ("1 2" matches), row 1's last token never occurred before: it drafts with the model
MIXED_PROMPTS = [[1, 2, 3, 1, 2, 3, 1, 2], [1, 2, 3, 4], [1, 2, 3, 1, 2, 3, 1, 2], [0, 5]]


@pytest.mark.slow
@pytest.mark.parametrize("broken", [False, True])
def test_draft_model_fallback_law(tiny_pair, laws, monkeypatch, broken):
    """Rows drafting with the model (row 1) and rows copying (rows 0 and 2) in one batch keep the target's law;
    accepting every draft must be caught."""
    from fastdecode.decoding import batched

    if broken:
        monkeypatch.setattr(batched, "_verify_token", accept_all)
    a, b = _law_counts(tiny_pair, RUNS, prompts=MIXED_PROMPTS, draft=tiny_pair[1])
    law_b = exact_law(tiny_pair[0], MIXED_PROMPTS[1], 2)
    if broken:
        assert min(chi_square_pvalue(a, laws[0]), chi_square_pvalue(b, law_b)) < ALPHA
    else:
        assert chi_square_pvalue(a, laws[0]) > ALPHA and chi_square_pvalue(b, law_b) > ALPHA


@pytest.mark.slow
def test_broken_rule_fails(tiny_pair, laws, monkeypatch):
    """Accepting every copied draft (rows follow the copy, not p) must be caught."""
    from fastdecode.decoding import batched

    monkeypatch.setattr(batched, "_verify_token", accept_all)
    a, b = _law_counts(tiny_pair, RUNS, stop_when=caught(*laws))
    assert min(chi_square_pvalue(a, laws[0]), chi_square_pvalue(b, laws[1])) < ALPHA


# ---------------------------------------------------------------------------------------------- code pair
def test_code_pair_greedy_batch(code_pair, stdlib_prompts):
    """Three stdlib prompts (each followed by its own start again: something to copy) of different lengths; a
    newline is EOS, so rows end at different steps."""
    target, _, tok = code_pair
    prompts = [p + p[:n] for p, n in ((stdlib_prompts[0][:20], 8), (stdlib_prompts[1][:35], 12),
                                      (stdlib_prompts[2][:48], 16))]
    ids, mask = left_pad(prompts)
    eos = tok("\n")["input_ids"][0]
    hf = target.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, pad_token_id=0,
                         eos_token_id=eos)
    for kw in (dict(fallback="off"), dict(verifier="block", fallback="off")):   # (off: per-row counts as alone)
        out = fastdecode.generate(target, ids, attention_mask=mask, method="prompt_lookup", max_new_tokens=24,
                                  temperature=0, eos_token_id=eos, pad_token_id=0, **kw)
        assert torch.equal(out.sequences, hf), kw
        for r, p in enumerate(prompts):
            alone = fastdecode.generate(target, torch.tensor([p]), method="prompt_lookup", max_new_tokens=24,
                                        temperature=0, eos_token_id=eos, **kw)
            n = alone.sequences.shape[1] - len(p)
            assert torch.equal(out.sequences[r, ids.shape[1] : ids.shape[1] + n], alone.sequences[0, len(p):])
            assert out.stats.extra["per_row"][r]["accepted"] == alone.stats.accepted_tokens
