"""Batched multi-draft decoding (B > 1, left padding): one draft tree per row over shared cache columns. Greedy
output equals HF ``generate`` on the same padded batch and each prompt run alone (per-row drafted / accepted
counts too), for several k, verifiers and fixed / adaptive depth, with rows finishing at different steps; the
target's law per row with a broken walk that must fail; the errors."""
import pytest
import torch

import fastdecode
from distribution import CHECK_EVERY, LAW_RUNS, caught, chi_square_pvalue, exact_law
from batches import eos_for, left_pad, random_prompts, tiny_pair

NEW = 16
LENS = [5, 9, 3, 7]
CONFIGS = [
    dict(num_drafts=2),                                                   # rrs, fixed depth 4
    dict(num_drafts=3, verifier="rrs_without_replacement", adaptive_draft=True, draft_length=2),
    dict(num_drafts=4, verifier="spectr", draft_length=2),
    dict(num_drafts=3, verifier="greedy_draft", draft_length=3),
    dict(num_drafts=1, draft_length=3),                                   # a chain through the tree code
]


@pytest.fixture(scope="module")
def pair():
    return tiny_pair()


@pytest.fixture(scope="module")
def batch():
    return left_pad(random_prompts(LENS))


@pytest.fixture(scope="module")
def eos(pair, batch):
    return eos_for(pair[0], batch, NEW, row=0, at=3)


@pytest.mark.parametrize("kw", CONFIGS)
@pytest.mark.parametrize("with_eos", [False, True])
def test_greedy_equals_hf_and_alone(pair, batch, eos, kw, with_eos):
    target, draft = pair
    ids, mask = batch
    L = ids.shape[1]
    eos_ids = [eos] if with_eos else []
    hf = target.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0,
                         eos_token_id=eos if with_eos else None)
    out = fastdecode.generate(target, ids, attention_mask=mask, draft=draft, method="multi_draft", max_new_tokens=NEW,
                              temperature=0, eos_token_id=eos_ids, pad_token_id=0, **kw)
    assert torch.equal(out.sequences, hf)
    per_row = out.stats.extra["per_row"]
    if with_eos:
        assert len({r["new_tokens"] for r in per_row}) > 1
    nodes = 0
    for r, n in enumerate(LENS):
        alone = fastdecode.generate(target, ids[r : r + 1, L - n :], draft=draft, method="multi_draft",
                                    max_new_tokens=NEW, temperature=0, eos_token_id=eos_ids, **kw)
        new = alone.sequences[0, n:]
        assert torch.equal(out.sequences[r, L : L + new.shape[0]], new)
        assert (out.sequences[r, L + new.shape[0]:] == 0).all()
        # per row the same trees are drafted and the same paths accepted as alone
        assert per_row[r]["new_tokens"] == alone.stats.new_tokens
        assert per_row[r]["drafted"] == alone.stats.drafted_tokens
        assert per_row[r]["accepted"] == alone.stats.accepted_tokens
        nodes += alone.stats.extra["tree_nodes"]
    assert out.stats.extra["tree_nodes"] == nodes
    assert out.stats.accepted_tokens > 0
    assert out.stats.target_calls == out.stats.extra["batch_steps"] == max(r["steps"] for r in per_row)


def test_cache_grows_by_accepted_paths(pair, batch, monkeypatch):
    """After each step's walk the tree columns are cut back to the longest accepted path (the rejected nodes of
    every row are gone, only shorter rows' holes remain), and each row's valid count matches its mask."""
    from fastdecode.decoding import batched_tree

    target, draft = pair
    ids, mask = batch
    checks = []
    orig = batched_tree._TreeCache.keep_paths

    def keep_paths(self, first, paths):
        orig(self, first, paths)
        checks.append((self.columns == first + max(len(p) for p in paths),
                       bool((self.mask.sum(-1) == self.valid).all()),
                       all(self.mask[r, first : first + len(p)].all() for r, p in enumerate(paths))))
    monkeypatch.setattr(batched_tree._TreeCache, "keep_paths", keep_paths)
    out = fastdecode.generate(target, ids, attention_mask=mask, draft=draft, method="multi_draft", num_drafts=3,
                              max_new_tokens=NEW, temperature=0, eos_token_id=[], pad_token_id=0)
    assert out.stats.extra["tree_nodes"] > out.stats.accepted_tokens   # something was rejected
    assert checks and all(all(c) for c in checks)


@pytest.mark.parametrize("kw", CONFIGS)
def test_static_engine_equals_dynamic(pair, batch, eos, kw):
    """The static engine (eager forwards; recorded ones: test_batched_static): greedy, rows ending at different
    steps, the same tokens, trees and accepted paths as the dynamic engine (itself equal to HF and alone)."""
    target, draft = pair
    ids, mask = batch
    run = dict(attention_mask=mask, draft=draft, method="multi_draft", max_new_tokens=NEW, temperature=0,
               eos_token_id=[eos], pad_token_id=0, **kw)
    dyn = fastdecode.generate(target, ids, **run)
    sta = fastdecode.generate(target, ids, cache_implementation="static", **run)
    assert torch.equal(sta.sequences, dyn.sequences)
    assert sta.stats.extra["per_row"] == dyn.stats.extra["per_row"]
    assert sta.stats.extra["tree_nodes"] == dyn.stats.extra["tree_nodes"]


@pytest.mark.parametrize("verifier", ["rrs", "spectr"])
def test_static_engine_seed_gives_the_dynamic_tokens(pair, batch, verifier):
    target, draft = pair
    ids, mask = batch
    kw = dict(attention_mask=mask, draft=draft, method="multi_draft", num_drafts=3, max_new_tokens=9, temperature=0.8,
              seed=4, eos_token_id=[], pad_token_id=0, verifier=verifier)
    dyn = fastdecode.generate(target, ids, **kw)
    sta = fastdecode.generate(target, ids, cache_implementation="static", **kw)
    assert torch.equal(sta.sequences, dyn.sequences)


@pytest.mark.parametrize("verifier", ["rrs", "spectr", "optimal"])
def test_sampled_runs_budget_and_seed(pair, batch, verifier):
    target, draft = pair
    ids, mask = batch
    kw = dict(attention_mask=mask, draft=draft, method="multi_draft", num_drafts=3, max_new_tokens=7, temperature=0.8,
              seed=4, eos_token_id=[], pad_token_id=0, verifier=verifier)
    a, b = (fastdecode.generate(target, ids, **kw) for _ in range(2))
    assert torch.equal(a.sequences, b.sequences) and a.sequences.shape == (len(LENS), ids.shape[1] + 7)
    assert all(r["new_tokens"] == 7 for r in a.stats.extra["per_row"])


@pytest.mark.parametrize("case,match", [
    ("draft_missing", "needs a draft model"),
    ("confidence", "confidence_threshold applies"),
])
def test_errors(pair, batch, case, match):
    target, draft = pair
    ids, mask = batch
    kw = dict(attention_mask=mask, draft=draft, method="multi_draft", num_drafts=2, max_new_tokens=2, pad_token_id=0)
    if case == "draft_missing":
        kw["draft"] = None
    elif case == "confidence":
        kw["confidence_threshold"] = 0.5
    with pytest.raises(ValueError, match=match):
        fastdecode.generate(target, ids, **kw)


# ---------------------------------------------------------------------------------------------- sampling law
PROMPTS = [[1, 2, 3, 4], [5, 1, 0], [1, 2, 3, 4], [2, 2]]   # rows 0 and 2 share a prompt, lengths differ
RUNS = LAW_RUNS
ALPHA = 1e-3


def _law_counts(tiny_pair, runs, stop_when=None, **kw):
    target, draft = tiny_pair
    ids, mask = left_pad(PROMPTS)
    L = ids.shape[1]
    counts_a, counts_b, joint = {}, {}, {}
    for seed in range(runs):
        out = fastdecode.generate(target, ids, attention_mask=mask, draft=draft, method="multi_draft",
                                  max_new_tokens=3, temperature=1.0, seed=seed, eos_token_id=[], pad_token_id=0, **kw)
        for r, counts in ((0, counts_a), (2, counts_a), (1, counts_b)):
            key = tuple(out.sequences[r, L : L + 2].tolist())
            counts[key] = counts.get(key, 0) + 1
        key = (int(out.sequences[0, L]), int(out.sequences[2, L]))
        joint[key] = joint.get(key, 0) + 1
        if stop_when is not None and (seed + 1) % CHECK_EVERY == 0 and stop_when(counts_a, counts_b):
            break
    return counts_a, counts_b, joint


@pytest.fixture(scope="module")
def laws(tiny_pair):
    return exact_law(tiny_pair[0], PROMPTS[0], 2), exact_law(tiny_pair[0], PROMPTS[1], 2)


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(num_drafts=2, draft_length=2),
                                dict(num_drafts=3, draft_length=2, verifier="rrs_without_replacement"),
                                dict(num_drafts=2, draft_length=1, verifier="spectr", adaptive_draft=True)])
def test_each_row_keeps_target_law(tiny_pair, laws, kw):
    """Rows 0 and 2 (same prompt) and row 1 each follow the target's 2-token law; rows 0 and 2 are independent."""
    a, b, joint = _law_counts(tiny_pair, RUNS, **kw)
    assert chi_square_pvalue(a, laws[0]) > ALPHA
    assert chi_square_pvalue(b, laws[1]) > ALPHA
    first: dict = {}
    for (x, _), pr in laws[0].items():
        first[x] = first.get(x, 0.0) + pr
    product = {(x, y): px * py for x, px in first.items() for y, py in first.items()}
    assert chi_square_pvalue(joint, product) > ALPHA


@pytest.mark.slow
def test_broken_walk_fails(tiny_pair, laws, monkeypatch):
    """Accepting the first drawn child at every node (rows follow q instead of p) must be caught."""
    from fastdecode.decoding import batched_tree

    def follow_first(self, tree, p):
        path, node = [], -1
        while node in tree.draws:
            node = tree.child[(node, tree.draws[node][0])]
            path.append(node)
        return path, int(fastdecode.verification.sample(p[node + 1][None], self.generator)[0])

    monkeypatch.setattr(batched_tree._Walker, "walk", follow_first)
    a, b, _ = _law_counts(tiny_pair, RUNS, stop_when=caught(*laws), num_drafts=2, draft_length=2)
    assert min(chi_square_pvalue(a, laws[0]), chi_square_pvalue(b, laws[1])) < ALPHA


# ---------------------------------------------------------------------------------------------- code pair
def test_code_pair_greedy_batch(code_pair, stdlib_prompts):
    """Three stdlib prompts of 20, 35 and 48 tokens; a newline is EOS, so rows end at different steps."""
    target, draft, tok = code_pair
    prompts = [stdlib_prompts[0][:20], stdlib_prompts[1][:35], stdlib_prompts[2][:48]]
    ids, mask = left_pad(prompts)
    eos = tok("\n")["input_ids"][0]
    hf = target.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, pad_token_id=0,
                         eos_token_id=eos)
    for kw in (dict(num_drafts=2), dict(num_drafts=4, verifier="spectr", adaptive_draft=True)):
        out = fastdecode.generate(target, ids, attention_mask=mask, draft=draft, method="multi_draft",
                                  max_new_tokens=24, temperature=0, eos_token_id=eos, pad_token_id=0, **kw)
        assert torch.equal(out.sequences, hf), kw
        for r, p in enumerate(prompts):
            alone = fastdecode.generate(target, torch.tensor([p]), draft=draft, method="multi_draft",
                                        max_new_tokens=24, temperature=0, eos_token_id=eos, **kw)
            n = alone.sequences.shape[1] - len(p)
            assert torch.equal(out.sequences[r, ids.shape[1] : ids.shape[1] + n], alone.sequences[0, len(p):])
            assert out.stats.extra["per_row"][r]["accepted"] == alone.stats.accepted_tokens
