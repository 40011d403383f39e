"""Batches of what has no batched loop (``decoding/batched_rows.py``): entropy switching and Lambda attention
with B > 1 decode the rows one after another. Each row equals its own call (greedy, both engines, left
padding, EOS); a seed replays the rows' draws in turn; the counters are the rows' sums, with each row's own."""
import pytest
import torch

import fastdecode
from fastdecode import LambdaAttention
from tiny_models import draft_of, tiny_lm

PAD = 0


@pytest.fixture(scope="module")
def pair():
    target = tiny_lm("llama", 2, seed=1, scale=10.0)
    return target, draft_of(target)


def _batch():
    rows = [[5, 6, 7, 8, 9, 10, 11], [3, 4, 5], [200, 201, 202, 203, 5]]
    L = max(map(len, rows))
    ids = torch.tensor([[PAD] * (L - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    return rows, ids, mask


CASES = [dict(method="entropy_switch", entropy_threshold=7.3),
         dict(method="entropy_switch", entropy_threshold=7.3, speculate_when_large=True),
         dict(method="autoregressive", lambda_attention=LambdaAttention(window=8, num_global=2)),
         dict(method="speculative", draft_length=3, adaptive_draft=False,
              lambda_attention=LambdaAttention(window=8, num_global=2)),
         dict(method="multi_draft", num_drafts=2, draft_length=2, lambda_attention=LambdaAttention(window=8,
                                                                                                   num_global=2))]


@pytest.mark.parametrize("engine", ["dynamic", "static"])
@pytest.mark.parametrize("kw", CASES, ids=lambda k: k["method"] + ("-lambda" if "lambda_attention" in k else "")
                         + ("-spec" if k.get("speculate_when_large") else ""))
def test_each_row_equals_its_own_call(pair, kw, engine):
    target, draft = pair
    rows, ids, mask = _batch()
    args = dict(draft=draft, temperature=0, max_new_tokens=12, eos_token_id=[], cache_implementation=engine, **kw)
    out = fastdecode.generate(target, ids, attention_mask=mask, pad_token_id=PAD, **args)
    L = ids.shape[1]
    assert out.sequences.shape == (3, L + 12) and torch.equal(out.sequences[:, :L], ids)
    total = 0
    for r, row in enumerate(rows):
        alone = fastdecode.generate(target, torch.tensor([row]), **args)
        assert torch.equal(out.sequences[r, L:], alone.sequences[0, len(row):]), f"row {r}"
        assert out.stats.extra["per_row"][r]["new_tokens"] == 12
        total += alone.stats.target_calls
    assert out.stats.new_tokens == 36 and out.stats.extra["rows_one_by_one"]
    if engine == "dynamic":   # (the same forwards as alone)
        assert out.stats.target_calls == total


def test_counters_are_the_rows(pair):
    """Integer counters summed, per-token fractions weighted by the rows' new tokens, shared values kept."""
    target, draft = pair
    rows, ids, mask = _batch()
    kw = dict(draft=draft, method="entropy_switch", temperature=0, max_new_tokens=10, entropy_threshold=7.3,
              eos_token_id=[])
    out = fastdecode.generate(target, ids, attention_mask=mask, pad_token_id=PAD, **kw)
    alone = [fastdecode.generate(target, torch.tensor([r]), **kw).stats.extra for r in rows]
    x = out.stats.extra
    assert x["tokens_by_target"] == sum(a["tokens_by_target"] for a in alone)
    assert x["switches"] == sum(a["switches"] for a in alone)
    assert x["large_fraction"] == pytest.approx(sum(a["large_fraction"] for a in alone) / 3)
    assert x["entropy_threshold"] == 7.3 and x["params_target"] == alone[0]["params_target"]
    assert out.stats.lossy and [p["extra"]["switches"] for p in x["per_row"]] == [a["switches"] for a in alone]
    assert 0 < x["tokens_by_target"] < 30   # (both models generate: the test sees real sums)


def test_early_stop_is_padded_and_seed_replays(pair):
    target, draft = pair
    rows, ids, mask = _batch()
    kw = dict(draft=draft, method="entropy_switch", max_new_tokens=12, entropy_threshold=7.3,
              attention_mask=mask, pad_token_id=PAD)
    greedy = fastdecode.generate(target, ids, temperature=0, eos_token_id=[], **kw).sequences
    eos = int(greedy[1, ids.shape[1] + 3])   # row 1's fourth new token ends it (if no earlier token is the same)
    out = fastdecode.generate(target, ids, temperature=0, eos_token_id=eos, **kw)
    n1 = out.stats.extra["per_row"][1]["new_tokens"]
    assert n1 <= 4 and torch.equal(out.sequences[1, ids.shape[1] + n1:], torch.full_like(out.sequences[1, ids.shape[1] + n1:], PAD))
    a = fastdecode.generate(target, ids, temperature=1.0, seed=3, eos_token_id=[], **kw).sequences
    b = fastdecode.generate(target, ids, temperature=1.0, seed=3, eos_token_id=[], **kw).sequences
    assert torch.equal(a, b)


@pytest.mark.parametrize("engine", ["dynamic", "static"])
def test_no_new_tokens_gives_each_rows_counters(pair, engine):
    """max_new_tokens=0: each row's counters are those of its call alone (zeros), and the batch's sums exist."""
    target, draft = pair
    rows, ids, mask = _batch()
    kw = dict(draft=draft, method="entropy_switch", temperature=0, max_new_tokens=0, entropy_threshold=7.3,
              eos_token_id=[], cache_implementation=engine)
    out = fastdecode.generate(target, ids, attention_mask=mask, pad_token_id=PAD, **kw)
    assert torch.equal(out.sequences, ids)
    for r, row in enumerate(rows):
        alone = fastdecode.generate(target, torch.tensor([row]), **kw).stats.extra
        assert out.stats.extra["per_row"][r]["extra"]["switches"] == alone["switches"] == 0
        assert out.stats.extra["per_row"][r]["extra"]["fed_tokens_target"] == alone["fed_tokens_target"]
    assert out.stats.extra["tokens_by_target"] == 0 and out.stats.extra["switches"] == 0
