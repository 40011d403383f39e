"""output_scores / output_logits: HF's per-token scores and logits of the target, on every method and engine."""
from __future__ import annotations

import pytest
import torch

import fastdecode
from tiny_models import tiny_llama


def _stacked(steps):
    return torch.stack(steps, 1)


@pytest.mark.slow
def test_greedy_scores_and_logits_equal_hf(code_pair, stdlib_prompts):
    """Greedy with a repetition penalty and an n-gram ban: the same scores and logits as HF generate returns
    (every method on both engines), so that HF's compute_transition_scores gives the same log-probabilities."""
    target, draft, _ = code_pair
    ids = torch.tensor([stdlib_prompts[0][:24]])
    kw = dict(max_new_tokens=24, repetition_penalty=1.3, no_repeat_ngram_size=3)
    hf = target.generate(ids, do_sample=False, return_dict_in_generate=True, output_scores=True, output_logits=True,
                         **kw)
    ref = target.compute_transition_scores(hf.sequences, hf.scores, normalize_logits=True)
    for engine in ("dynamic", "static"):
        for method, extra in (("autoregressive", {}), ("speculative", dict(draft=draft)), ("prompt_lookup", {}),
                              ("multi_draft", dict(draft=draft, num_drafts=2, draft_length=3))):
            out = fastdecode.generate(target, ids, method=method, temperature=0, cache_implementation=engine,
                                      output_scores=True, output_logits=True, **extra, **kw)
            assert torch.equal(out.sequences, hf.sequences), (engine, method)
            assert len(out.scores) == len(out.logits) == 24
            torch.testing.assert_close(_stacked(out.scores), _stacked(hf.scores), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(_stacked(out.logits), _stacked(hf.logits), atol=1e-4, rtol=1e-4)
            mine = target.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
            torch.testing.assert_close(mine, ref, atol=1e-4, rtol=1e-4)
    # the scores are the processed logits: without the penalty they differ where the text repeats a token
    plain = fastdecode.generate(target, ids, temperature=0, max_new_tokens=24, output_scores=True)
    assert not torch.allclose(_stacked(plain.scores)[:, :4], _stacked(hf.scores)[:, :4])


@pytest.mark.slow
def test_batch_scores_per_row(code_pair, stdlib_prompts):
    """A left-padded batch: each row's scores over its own generated tokens equal HF's batched ones; columns
    after a row's end are zeros."""
    target, draft, _ = code_pair
    rows = [stdlib_prompts[i][:k] for i, k in enumerate((20, 14, 9))]
    batch = torch.tensor([[0] * (20 - len(r)) + r for r in rows])
    mask = (batch != -1).long()
    for i, r in enumerate(rows):
        mask[i, : 20 - len(r)] = 0
    eos = int(target.generate(batch[1:2, 6:], max_new_tokens=12, do_sample=False)[0, -5])  # row 1 ends early
    kw = dict(max_new_tokens=16, eos_token_id=eos, pad_token_id=0)
    hf = target.generate(batch, attention_mask=mask, do_sample=False, return_dict_in_generate=True,
                         output_scores=True, **kw)
    for engine in ("dynamic", "static"):
        out = fastdecode.generate(target, batch, attention_mask=mask, draft=draft, temperature=0,
                                  cache_implementation=engine, output_scores=True, **kw)
        assert torch.equal(out.sequences, hf.sequences), engine
        mine, ref = _stacked(out.scores), _stacked(hf.scores)
        counts = [row["new_tokens"] for row in out.stats.extra["per_row"]]
        assert counts[1] < 16 and mine.shape == ref.shape
        for r, k in enumerate(counts):
            torch.testing.assert_close(mine[r, :k], ref[r, :k], atol=1e-4, rtol=1e-4)
            assert not mine[r, k:].any()


def _hf_warped(model, seq, prompt_len, warpers):
    """HF's scores for the tokens of ``seq`` after ``prompt_len``: its warper list on the target's logits."""
    with torch.no_grad():
        logits = model(seq).logits[0]
    return [warpers(seq[:, : prompt_len + i], logits[prompt_len + i - 1 : prompt_len + i].clone())[0]
            for i in range(seq.shape[1] - prompt_len)]


@pytest.mark.parametrize("settings", [
    dict(temperature=0.7),
    dict(temperature=1.3, top_k=5, top_p=0.8),
    dict(temperature=0.9, min_p=0.1, typical_p=0.9),
    dict(temperature=1.0, epsilon_cutoff=0.01, eta_cutoff=0.01),
])
def test_sampled_scores_are_hfs_warped_logits(settings):
    """Sampling: each token's scores are HF's warper chain on the target's logits at that position, -inf exactly
    where HF drops the token."""
    from transformers import (EpsilonLogitsWarper, EtaLogitsWarper, LogitsProcessorList, MinPLogitsWarper,
                              TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, TypicalLogitsWarper)

    m, d = tiny_llama(1, vocab=40), tiny_llama(2, vocab=40)
    ids = torch.tensor([[1, 2, 3, 4]])
    s = settings
    warpers = LogitsProcessorList([TemperatureLogitsWarper(s["temperature"])])
    for name, cls in (("top_k", TopKLogitsWarper), ("top_p", TopPLogitsWarper), ("min_p", MinPLogitsWarper),
                      ("typical_p", TypicalLogitsWarper), ("epsilon_cutoff", EpsilonLogitsWarper)):
        if name in s:
            warpers.append(cls(s[name]))
    if "eta_cutoff" in s:
        warpers.append(EtaLogitsWarper(s["eta_cutoff"], device="cpu"))
    for method, extra in (("speculative", dict(draft=d)), ("multi_draft", dict(draft=d, num_drafts=3))):
        out = fastdecode.generate(m, ids, method=method, max_new_tokens=12, seed=3, output_scores=True, **extra, **s)
        ref = _hf_warped(m, out.sequences, 4, warpers)
        for i, (a, b) in enumerate(zip(out.scores, ref)):
            assert torch.equal(torch.isinf(a[0]), torch.isinf(b)), (method, i)
            fin = ~torch.isinf(b)
            torch.testing.assert_close(a[0][fin], b[fin], atol=1e-5, rtol=1e-5)
        assert any(torch.isinf(a).any() for a in out.scores) == (len(s) > 1)


def test_scores_under_lambda_attention_follow_its_tokens():
    """Lambda attention past the window: the logits are those of the Lambda-masked target (greedy: each token is
    their argmax), not of full attention, on both engines."""
    from fastdecode import LambdaAttention

    m = tiny_llama(4, vocab=64, layers=2)
    ids = torch.randint(0, 64, (1, 40), generator=torch.Generator().manual_seed(1))
    cfg = LambdaAttention(window=8, num_global=2)
    for engine in ("dynamic", "static"):
        out = fastdecode.generate(m, ids, temperature=0, max_new_tokens=12, lambda_attention=cfg, eos_token_id=-1,
                                  cache_implementation=engine, output_logits=True)
        assert out.scores is None and len(out.logits) == 12
        lg = _stacked(out.logits)[0]
        assert torch.equal(lg.argmax(-1), out.sequences[0, 40:]), engine
    full = fastdecode.generate(m, out.sequences[:, :40], temperature=0, max_new_tokens=12, output_logits=True)
    assert not torch.allclose(_stacked(full.logits)[0, :1], lg[:1])


def test_scores_edge_cases_and_errors():
    m = tiny_llama(1)
    ids = torch.tensor([[1, 2, 3]])
    out = fastdecode.generate(m, ids, max_new_tokens=0, output_scores=True, output_logits=True)
    assert out.scores == () and out.logits == ()
    out = fastdecode.generate(m, ids, max_new_tokens=3, temperature=0)
    assert out.scores is None and out.logits is None and "scoring_s" not in out.stats.extra
    with pytest.raises(ValueError, match="output_scores must be True or False, got 'yes'"):
        fastdecode.generate(m, ids, output_scores="yes")
    with pytest.raises(ValueError, match="return_dict_in_generate= is an option.*output_scores=True"):
        fastdecode.generate(m, ids, return_dict_in_generate=False)


def test_renormalize_logits_gives_log_probabilities():
    """renormalize_logits=True (HF's): the scores are the log-softmax of the warped scores (argument or generation
    config)."""
    m, d = tiny_llama(1, vocab=40), tiny_llama(2, vocab=40)
    ids = torch.tensor([[1, 2, 3, 4]])
    kw = dict(draft=d, max_new_tokens=8, seed=5, top_k=6, output_scores=True)
    raw = fastdecode.generate(m, ids, **kw)
    norm = fastdecode.generate(m, ids, renormalize_logits=True, **kw)
    assert torch.equal(raw.sequences, norm.sequences)
    torch.testing.assert_close(_stacked(norm.scores), _stacked(raw.scores).log_softmax(-1))
    m.generation_config.renormalize_logits = True
    try:
        again = fastdecode.generate(m, ids, **kw)
    finally:
        m.generation_config.renormalize_logits = None
    torch.testing.assert_close(_stacked(again.scores), _stacked(norm.scores))


def test_batch_logits_alone_equal_hf():
    """output_logits without output_scores, a batch: every row's logits (a first version kept only the last
    row's, the others zeros)."""
    m = tiny_llama(1, vocab=40)
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10]])
    hf = m.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0, output_logits=True,
                    return_dict_in_generate=True)
    out = fastdecode.generate(m, ids, temperature=0, max_new_tokens=4, pad_token_id=0, output_logits=True)
    assert torch.equal(out.sequences, hf.sequences) and out.scores is None
    torch.testing.assert_close(_stacked(out.logits), _stacked(hf.logits), atol=1e-5, rtol=1e-5)
