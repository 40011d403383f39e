"""Single-draft speculative decoding keeps the target's law: the two-token law of whole generations
(token and block verifiers), and an accept-everything rule fails.

Tiny random Llama pairs (V = 6) make thousands of seeded generations cheap; the exact law of the first
two tokens comes from enumeration. Each test also runs a deliberately broken variant that must fail.
"""
import pytest
import torch

import fastdecode
from distribution import chi_square_pvalue, exact_law, sample_law

PROMPT = [1, 2, 3, 4]
RUNS = 1200
ALPHA = 1e-3  # seeds are fixed, so each test is deterministic; this only sets its power
CHI_SQUARE = pytest.mark.slow  # RUNS seeded generations each: 30-60 s on an idle core, minutes on a loaded one


@pytest.fixture(scope="module")
def law2(tiny_pair):
    return exact_law(tiny_pair[0], PROMPT, 2)


def _pvalue(tiny_pair, law2, **kw):
    counts = sample_law(*tiny_pair, PROMPT, 2, RUNS, max_new_tokens=3, temperature=1.0, **kw)
    return chi_square_pvalue(counts, law2)


@CHI_SQUARE
def test_speculative_two_token_law(tiny_pair, law2):
    assert _pvalue(tiny_pair, law2, method="speculative", draft_length=2, adaptive_draft=False) > ALPHA


@CHI_SQUARE
def test_block_two_token_law(tiny_pair, law2):
    assert _pvalue(tiny_pair, law2, method="speculative", draft_length=2, adaptive_draft=False,
                   verifier="block") > ALPHA


@CHI_SQUARE
def test_broken_speculative_rule_fails(tiny_pair, law2, monkeypatch):
    """Accepting every draft (output q instead of p) must be caught."""
    from fastdecode.decoding import step

    def accept_all(p, q, drafts, generator=None):
        return drafts.shape[0], int(fastdecode.verification.sample(p[-1:], generator)[0])

    monkeypatch.setitem(step.CHAIN_VERIFIERS, "token", accept_all)
    assert _pvalue(tiny_pair, law2, method="speculative", draft_length=2, adaptive_draft=False) < ALPHA
