"""The speed-up model of bench/spec_ceiling.py: expected tokens of a chain step and the predicted speed-ups."""
import pytest

from bench.spec_ceiling import expected_tokens, predicted_speedups


def test_expected_tokens_closed_form_and_enumeration():
    for alpha in (0.0, 0.3, 0.9, 1.0):
        for gamma in range(5):
            # a step keeps the first i drafts with probability alpha^i (1 - alpha) (i < gamma) or alpha^gamma,
            # and adds one token (the residual or the bonus)
            enum = sum((i + 1) * alpha ** i * (1 - alpha) for i in range(gamma)) + (gamma + 1) * alpha ** gamma
            assert expected_tokens(alpha, gamma) == pytest.approx(enum)


def test_predicted_speedups():
    # free verification and drafting: the speed-up is the expected tokens per step
    assert predicted_speedups([1.0, 1.0, 1.0], 0.0, 0.5) == pytest.approx([1.5, 1.75])
    # a verification as dear as n plain steps and costly drafts: never worth it
    assert max(predicted_speedups([1.0, 2.0, 3.0], 0.2, 0.9)) < 1
    # alpha = 0: each step emits one token for more than a plain step's cost
    assert all(s < 1 for s in predicted_speedups([1.0, 1.1, 1.2], 0.1, 0.0))
