"""Single-draft speculative decoding keeps the target's law: the two-token law of whole generations
(token and block verifiers), and an accept-everything rule fails.

Tiny random Llama pairs (V = 6) make thousands of seeded generations cheap; the exact law of the first
two tokens comes from enumeration. Each test also runs a deliberately broken variant that must fail.
"""
import pytest

from distribution import LAW_ALPHA as ALPHA
from distribution import accept_every_draft
from distribution import two_token_pvalue as _pvalue

CHI_SQUARE = pytest.mark.slow  # LAW_RUNS seeded generations each: 30-60 s on an idle core, minutes on a loaded one


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

    monkeypatch.setitem(step.CHAIN_VERIFIERS, "token", accept_every_draft)
    assert _pvalue(tiny_pair, law2, broken=True, method="speculative", draft_length=2, adaptive_draft=False) < ALPHA
