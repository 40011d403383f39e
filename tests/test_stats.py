"""DecodeStats: what one verification step records, the derived rates, and the one-line summary."""
import math

from fastdecode.stats import DecodeStats


def test_record_step_fills_the_histograms():
    s = DecodeStats(method="speculative")
    s.record_step(drafted=3, accepted=1)
    s.record_step(drafted=2, accepted=2)
    s.record_step(drafted=0, accepted=0)           # a plain step (nothing drafted)
    assert (s.drafted_tokens, s.accepted_tokens, s.steps) == (5, 3, 3)
    assert s.accepted_length_histogram == [1, 1, 1]   # one step each with 0, 1 and 2 accepted
    assert s.position_drafted == [2, 2, 1] and s.position_accepted == [2, 1]
    assert s.per_position_acceptance == [1.0, 0.5]    # the third position was drafted once, never accepted...
    assert len(s.per_position_acceptance) == 2        # ...and positions past the longest acceptance are not listed


def test_rates_and_nan_when_undefined():
    s = DecodeStats()
    assert math.isnan(s.acceptance_rate) and math.isnan(s.tokens_per_target_call) and math.isnan(s.tokens_per_s)
    s.record_step(4, 3)
    s.new_tokens, s.target_calls, s.wall_time_s = 9, 3, 0.5
    assert s.acceptance_rate == 0.75 and s.tokens_per_target_call == 3.0 and s.tokens_per_s == 18.0


def test_summary_names_what_applies():
    s = DecodeStats(method="autoregressive", new_tokens=4, target_calls=4, wall_time_s=1.0)
    assert "method=autoregressive" in s.summary() and "alpha" not in s.summary()
    s = DecodeStats(method="multi_draft", new_tokens=6, target_calls=2, wall_time_s=1.0, lossy=True,
                    extra=dict(tree_nodes=8, num_drafts=2, verifier="typical"))
    s.record_step(4, 2)
    line = s.summary()
    assert "alpha=0.500" in line and "tau=3.00" in line and "k=2 (typical)" in line and line.endswith("(lossy)")


def test_summary_names_the_fallback():
    s = DecodeStats(method="speculative", new_tokens=9, target_calls=7, drafted_tokens=4, accepted_tokens=2,
                    wall_time_s=1.0, extra=dict(plain_steps=5, measured_tokens_per_s=dict(drafting=80.0, plain=120.0)))
    assert "plain steps=5 (measured: drafting 80 tok/s, plain 120 tok/s)" in s.summary()


def test_the_result_reads_like_hf_output():
    """A GenerationResult is read like HF's ModelOutput (return_dict_in_generate=True): by key, by index, with
    `in`, keys() and to_tuple(), its keys being HF's fields that are set."""
    import pytest
    import torch

    from fastdecode.stats import GenerationResult

    seqs, scores = torch.tensor([[1, 2, 3]]), (torch.zeros(1, 4),)
    out = GenerationResult(seqs, DecodeStats(), scores=scores)
    assert out["sequences"] is seqs and out["scores"] is scores and out[0] is seqs and out[1] is scores
    assert out.keys() == ["sequences", "scores"] and out.to_tuple() == (seqs, scores)
    assert "scores" in out and "logits" not in out and "stats" not in out
    with pytest.raises(KeyError, match="output_logits=True"):
        out["logits"]
    with pytest.raises(KeyError, match=r"\.stats"):
        out["stats"]
    plain = GenerationResult(seqs, DecodeStats())
    assert plain.keys() == ["sequences"] and plain[-1] is seqs
