"""Sampling losslessness on the real code pair: seeded generations reproduce the target's law.

max_new_tokens=2 (resp. 3) so that the first token (resp. two tokens) really goes through drafting
and verification (the last token of a budget is always sampled from p directly). top_k keeps the
support small enough for a chi-square test with a few hundred runs; the prompt is the one where p and
q disagree most, so that a broken rule is caught.
"""
import pytest
import torch

from distribution import caught, chi_square_pvalue, exact_law, sample_law
from fastdecode import kernels

pytestmark = pytest.mark.slow  # chi-square tests on the real code pair, 2-3 minutes each on 2 cores

RUNS = 300
ALPHA = 1e-3


@pytest.fixture(scope="module")
def hard_prompt(code_pair, stdlib_prompts):
    target, draft, _ = code_pair
    best, best_tv = None, -1.0
    with torch.inference_mode():
        for pr in stdlib_prompts:
            pr = pr[:16]
            p = kernels.probs(target(torch.tensor([pr])).logits[0, -1:], 1.0, 4)
            q = kernels.probs(draft(torch.tensor([pr])).logits[0, -1:], 1.0, 4)
            tv = 0.5 * float((p - q).abs().sum())
            if tv > best_tv:
                best, best_tv = pr, tv
    assert best_tv > 0.2, "no prompt where p and q differ enough to test the verifier"
    return best


def _pvalue(code_pair, prompt, n_tokens, top_k, broken=False, **kw):
    target, draft, _ = code_pair
    law = exact_law(target, prompt, n_tokens, top_k=top_k)
    counts = sample_law(target, draft, prompt, n_tokens, RUNS, max_new_tokens=n_tokens + 1, temperature=1.0,
                        top_k=top_k, stop_when=caught(law, alpha=ALPHA) if broken else None, **kw)
    return chi_square_pvalue(counts, law)


def test_speculative_first_token_law(code_pair, hard_prompt):
    assert _pvalue(code_pair, hard_prompt, 1, 4, method="speculative", draft_length=3) > ALPHA


def test_broken_rule_fails_on_code_pair(code_pair, hard_prompt, monkeypatch):
    import torch

    import fastdecode.kernels as K

    # a residual that ignores q (sampling p again after a rejection) over-weights the draft's tokens
    real = K.verify_speculative

    def p_instead_of_residual(p, q, drafts, u, noise):
        tokens, index = real(p, q, drafts, u, noise)
        return torch.where(index == 0, tokens, (p.float() / noise).argmax(-1)), index

    monkeypatch.setattr(K, "verify_speculative", p_instead_of_residual)
    assert _pvalue(code_pair, hard_prompt, 1, 4, broken=True, method="speculative", draft_length=3) < ALPHA


def test_multi_draft_two_token_law(code_pair, hard_prompt):
    assert _pvalue(code_pair, hard_prompt, 2, 3, method="multi_draft", num_drafts=2, draft_length=2,
                   verifier="rrs") > ALPHA
