"""Multi-draft decoding keeps the target's law: the two-token law of whole generations for every verifier,
the adaptive tree depth, k = 1 against single-draft decoding, and batched optimal tree nodes.

Tiny random Llama pairs (V = 6) make thousands of seeded generations cheap; the exact law of the first
two tokens comes from enumeration. Each test also runs a deliberately broken variant that must fail.
"""
import pytest
import torch

import fastdecode
from distribution import LAW_ALPHA as ALPHA
from distribution import LAW_PROMPT as PROMPT
from distribution import two_token_pvalue as _pvalue

CHI_SQUARE = pytest.mark.slow  # LAW_RUNS seeded generations each: 30-60 s on an idle core, minutes on a loaded one


@CHI_SQUARE
@pytest.mark.parametrize("verifier,k", [("rrs", 2), ("rrs_without_replacement", 3), ("spectr", 3),
                                        ("greedy_draft", 3), ("optimal", 3)])
def test_multi_draft_two_token_law(tiny_pair, law2, verifier, k):
    assert _pvalue(tiny_pair, law2, method="multi_draft", num_drafts=k, draft_length=2, verifier=verifier) > ALPHA


@CHI_SQUARE
def test_adaptive_multi_draft_two_token_law(tiny_pair, law2):
    """The tree depth follows past outcomes (here 1, 2, 3, ... within one generation): the law is unchanged."""
    assert _pvalue(tiny_pair, law2, method="multi_draft", num_drafts=2, draft_length=1, adaptive_draft=True,
                   verifier="spectr") > ALPHA


def test_adaptive_tree_depth_follows_acceptance(tiny_pair):
    target, draft = tiny_pair
    out = fastdecode.generate(target, torch.tensor([PROMPT]), draft=draft, method="multi_draft", num_drafts=2,
                              draft_length=1, adaptive_draft=True, max_draft_length=5, max_new_tokens=60, seed=0,
                              eos_token_id=[])
    fixed = fastdecode.generate(target, torch.tensor([PROMPT]), draft=draft, method="multi_draft", num_drafts=2,
                                draft_length=1, max_new_tokens=60, seed=0, eos_token_id=[])
    longest = lambda r: len(r.stats.accepted_length_histogram) - 1  # noqa: E731  (most drafts accepted in a step)
    assert longest(fixed) == 1 and longest(out) > 2  # the depth grew after fully accepted trees


@CHI_SQUARE
def test_broken_tree_walk_fails(tiny_pair, law2, monkeypatch):
    """Verifying without-replacement siblings sorted by q instead of in draw order is biased."""
    from fastdecode.decoding import tree as tree_mod

    orig = tree_mod.DraftTree.add_children

    def sorted_children(self, node, draws):
        q = self.q[node]
        return orig(self, node, sorted(draws, key=lambda t: -float(q[t])))

    monkeypatch.setattr(tree_mod.DraftTree, "add_children", sorted_children)
    assert _pvalue(tiny_pair, law2, broken=True, method="multi_draft", num_drafts=3, draft_length=2,
                   verifier="rrs_without_replacement") < ALPHA


def test_k1_multi_draft_equals_single_draft(tiny_pair):
    """k = 1 reduces exactly to single-draft speculative decoding: same tokens for the same seed."""
    target, draft = tiny_pair
    ids = torch.tensor([PROMPT])
    for seed in range(5):
        a = fastdecode.generate(target, ids, draft=draft, method="speculative", draft_length=3, adaptive_draft=False,
                                max_new_tokens=20, seed=seed, eos_token_id=[])
        b = fastdecode.generate(target, ids, draft=draft, method="multi_draft", num_drafts=1, draft_length=3,
                                max_new_tokens=20, seed=seed, eos_token_id=[])
        assert torch.equal(a.sequences, b.sequences)


def test_optimal_batched_tree_nodes_equal_per_node(tiny_pair, monkeypatch):
    """The optimal verifier's races built for every tree node in one batched call before the walk give
    exactly the tokens of one build per visited node (same seed), so the law tests cover both paths."""
    from fastdecode.decoding import multi_draft
    target, draft = tiny_pair
    ids = torch.tensor([PROMPT])
    calls = []
    real_build = multi_draft.build_races
    monkeypatch.setattr(multi_draft, "build_races", lambda *a: calls.append(len(a[2])) or real_build(*a))
    for seed in range(4):
        out = {}
        for batched in (False, True):
            monkeypatch.setattr(multi_draft, "BATCH_NODES", batched)
            out[batched] = fastdecode.generate(target, ids, draft=draft, method="multi_draft", num_drafts=4,
                                               draft_length=3, verifier="optimal", max_new_tokens=20, seed=seed,
                                               eos_token_id=[]).sequences
        assert torch.equal(out[False], out[True])
    assert calls and max(calls) > 1          # one call per step covered several nodes


@CHI_SQUARE
def test_optimal_batched_tree_nodes_two_token_law(tiny_pair, law2, monkeypatch):
    from fastdecode.decoding import multi_draft
    monkeypatch.setattr(multi_draft, "BATCH_NODES", True)
    assert _pvalue(tiny_pair, law2, method="multi_draft", num_drafts=3, draft_length=2, verifier="optimal") > ALPHA
