"""Batched decoding (B > 1, left padding) with ragged acceptance: greedy equality with HF ``generate`` on the
same padded batch and with each prompt run alone, the target's law per row, and the bad-input errors."""
import pytest
import torch

import fastdecode
from distribution import CHECK_EVERY, LAW_RUNS, caught, chi_square_pvalue, exact_law
from batches import accept_all, eos_for, left_pad, random_prompts, tiny_pair
from tiny_models import draft_of, tiny_lm

NEW = 16
LENS = [5, 9, 3, 7]
CONFIGS = [
    ("autoregressive", {}),
    ("speculative", {}),                                           # token verifier, adaptive length
    ("speculative", dict(verifier="block")),                       # block verifier, adaptive length
    ("speculative", dict(adaptive_draft=False, draft_length=3)),   # fixed length
    ("speculative", dict(adaptive_draft=False, draft_length=2, verifier="block")),
]


@pytest.fixture(scope="module")
def pair():
    return tiny_pair()


@pytest.fixture(scope="module")
def batch():
    return left_pad(random_prompts(LENS))


@pytest.fixture(scope="module")
def eos(pair, batch):
    """A token that row 0 produces early and the other rows later or never, so rows finish at different steps."""
    return eos_for(pair[0], batch, NEW, row=0, at=3)


def _run(pair, ids, mask, method, kw, **extra):
    target, draft = pair
    return fastdecode.generate(target, ids, attention_mask=mask, draft=draft if method != "autoregressive" else None,
                               method=method, max_new_tokens=NEW, temperature=0, **kw, **extra)


@pytest.mark.parametrize("method,kw", CONFIGS)
@pytest.mark.parametrize("with_eos", [False, True])
@pytest.mark.parametrize("engine", ["dynamic", "static"])
def test_greedy_equals_hf_and_alone(pair, batch, eos, method, kw, with_eos, engine):
    target, _ = pair
    kw = {**kw, "cache_implementation": engine}
    ids, mask = batch
    eos_ids = [eos] if with_eos else []
    hf = target.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0,
                         eos_token_id=eos if with_eos else None)
    out = _run(pair, ids, mask, method, kw, eos_token_id=eos_ids, pad_token_id=0)
    assert torch.equal(out.sequences, hf)
    L = ids.shape[1]
    per_row = out.stats.extra["per_row"]
    if with_eos:
        assert len({r["new_tokens"] for r in per_row}) > 1  # rows finished at different steps
    for r, n in enumerate(LENS):
        alone = _run(pair, ids[r : r + 1, L - n :], None, method, kw, eos_token_id=eos_ids)
        new = alone.sequences[0, n:]
        assert torch.equal(out.sequences[r, L : L + new.shape[0]], new)
        assert (out.sequences[r, L + new.shape[0]:] == 0).all()   # pad after the row's end
        assert per_row[r]["new_tokens"] == alone.stats.new_tokens
        if kw.get("adaptive_draft") is False:
            # fixed length: per row, the same drafts are made and accepted as alone (no row waits for the others)
            assert per_row[r]["drafted"] == alone.stats.drafted_tokens
            assert per_row[r]["accepted"] == alone.stats.accepted_tokens
    assert out.stats.new_tokens == sum(r["new_tokens"] for r in per_row)
    assert out.stats.accepted_tokens == sum(r["accepted"] for r in per_row)


def test_batch_of_one_with_padding_equals_unpadded(pair):
    ids = torch.tensor([[0, 0, 7, 8, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    out = _run(pair, ids, mask, "speculative", {}, eos_token_id=[])
    plain = _run(pair, ids[:, 2:], None, "speculative", {}, eos_token_id=[])
    assert torch.equal(out.sequences[:, 2:], plain.sequences) and torch.equal(out.sequences[:, :2], ids[:, :2])


def test_pad_token_from_generation_config(pair, batch):
    target, draft = pair
    ids, mask = batch
    target.generation_config.pad_token_id = 3
    try:
        out = fastdecode.generate(target, ids, attention_mask=mask, draft=draft, max_new_tokens=4, temperature=0,
                                  eos_token_id=[])
    finally:
        target.generation_config.pad_token_id = None
    assert out.sequences.shape == (len(LENS), ids.shape[1] + 4)


@pytest.mark.parametrize("case,match", [
    ("mask_shape", "must match"),
    ("right_padding", "right padding"),
    ("hole", "inside the text"),
    ("all_padding", "all padding"),
    ("empty_batch", "batch size 0"),
    ("no_pad", "pad_token_id"),
    ("mask_values", "only 0"),
])
def test_bad_batch_input(pair, batch, case, match):
    target, draft = pair
    ids, mask = batch
    kw = dict(draft=draft, attention_mask=mask, pad_token_id=0, max_new_tokens=2, temperature=0)
    if case == "mask_shape":
        kw["attention_mask"] = mask[:, 1:]
    elif case == "right_padding":
        kw["attention_mask"] = mask.flip(-1)
    elif case == "hole":   # a 0 between 1s is not right padding: the message says what it is
        m = mask.clone()
        m[0, -2] = 0
        kw["attention_mask"] = m
    elif case == "all_padding":
        m = mask.clone()
        m[1] = 0
        kw["attention_mask"] = m
    elif case == "empty_batch":
        ids, kw["attention_mask"] = ids[:0], mask[:0]
    elif case == "no_pad":
        kw.pop("pad_token_id")
    elif case == "mask_values":
        kw["attention_mask"] = mask * 2
    with pytest.raises(ValueError, match=match):
        fastdecode.generate(target, ids, **kw)


# ---------------------------------------------------------------------------------------------- sampling law
PROMPTS = [[1, 2, 3, 4], [5, 1, 0], [1, 2, 3, 4], [2, 2]]   # rows 0 and 2 share a prompt, lengths differ
RUNS = LAW_RUNS
ALPHA = 1e-3


def _batched_law(tiny_pair, runs, stop_when=None, **kw):
    """Counts of the first two new tokens of rows 0 + 2 (prompt PROMPTS[0]) and of row 1 over seeded batches
    (``stop_when(counts_a, counts_b)``: see distribution.sample_law)."""
    target, draft = tiny_pair
    ids, mask = left_pad(PROMPTS)
    counts_a, counts_b, joint = {}, {}, {}
    for seed in range(runs):
        out = fastdecode.generate(target, ids, attention_mask=mask, draft=draft, max_new_tokens=3, temperature=1.0,
                                  seed=seed, eos_token_id=[], pad_token_id=0, **kw)
        L = ids.shape[1]
        for r, counts in ((0, counts_a), (2, counts_a), (1, counts_b)):
            key = tuple(out.sequences[r, L : L + 2].tolist())
            counts[key] = counts.get(key, 0) + 1
        pair_key = (int(out.sequences[0, L]), int(out.sequences[2, L]))   # first tokens of rows 0 and 2
        joint[pair_key] = joint.get(pair_key, 0) + 1
        if stop_when is not None and (seed + 1) % CHECK_EVERY == 0 and stop_when(counts_a, counts_b):
            break
    return counts_a, counts_b, joint


@pytest.fixture(scope="module")
def laws(tiny_pair):
    return exact_law(tiny_pair[0], PROMPTS[0], 2), exact_law(tiny_pair[0], PROMPTS[1], 2)


@pytest.mark.slow
@pytest.mark.parametrize("kw", [dict(draft_length=2, adaptive_draft=False),
                                dict(draft_length=2, adaptive_draft=False, verifier="block"),
                                dict(draft_length=1)])
def test_each_row_keeps_target_law(tiny_pair, laws, kw):
    """Rows 0 and 2 (same prompt) and row 1 each follow the target's 2-token law, and rows 0 and 2 are
    independent: their first tokens follow the product law."""
    a, b, joint = _batched_law(tiny_pair, RUNS, **kw)
    assert chi_square_pvalue(a, laws[0]) > ALPHA
    assert chi_square_pvalue(b, laws[1]) > ALPHA
    first: dict = {}
    for (x, _), pr in laws[0].items():
        first[x] = first.get(x, 0.0) + pr
    product = {(x, y): px * py for x, px in first.items() for y, py in first.items()}
    assert chi_square_pvalue(joint, product) > ALPHA


@pytest.mark.slow
def test_broken_batched_rule_fails(tiny_pair, laws, monkeypatch):
    """Accepting every draft (rows follow q instead of p) must be caught."""
    from fastdecode.decoding import batched

    monkeypatch.setattr(batched, "_verify_token", accept_all)
    a, b, _ = _batched_law(tiny_pair, RUNS, stop_when=caught(*laws), draft_length=2, adaptive_draft=False)
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
    for method, kw in [("autoregressive", {}), ("speculative", {}), ("speculative", dict(verifier="block"))]:
        out = fastdecode.generate(target, ids, attention_mask=mask, draft=draft if method != "autoregressive" else None,
                                  method=method, max_new_tokens=24, temperature=0, eos_token_id=eos, pad_token_id=0,
                                  **kw)
        assert torch.equal(out.sequences, hf), method
        for r, p in enumerate(prompts):
            alone = fastdecode.generate(target, torch.tensor([p]), draft=draft, method=method, max_new_tokens=24,
                                        temperature=0, eos_token_id=eos, **kw)
            n = alone.sequences.shape[1] - len(p)
            assert torch.equal(out.sequences[r, ids.shape[1] : ids.shape[1] + n], alone.sequences[0, len(p):])


SW_METHODS = [("autoregressive", {}), ("speculative", dict(adaptive_draft=False, draft_length=3)),
              ("speculative", dict(verifier="block", fallback="off")),   # (off: drafts in every step)
              ("prompt_lookup", dict(fallback="off")), ("multi_draft", dict(num_drafts=2, draft_length=3)),
              ("multi_draft", dict(num_drafts=3, adaptive_draft=True))]
SW_MODELS = {"mistral": dict(sliding_window=4),                                     # every layer windowed
             "qwen2": dict(sliding_window=4, use_sliding_window=True, max_window_layers=1),   # full, then windowed
             "gemma2": dict(sliding_window=4)}                                      # alternating


@pytest.fixture(scope="module", params=sorted(SW_MODELS))
def windowed(request):
    target = tiny_lm(request.param, layers=2, seed=0, **SW_MODELS[request.param])
    prompts = [[7, 8, 9, 7, 8], [30, 31, 32, 33, 34, 35, 36, 37, 38], [50, 51, 52], [60, 61, 62, 60, 61, 62, 60]]
    ids, mask = left_pad(prompts)
    hf = target.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    return target, draft_of(target, 1), prompts, ids, mask, hf


@pytest.mark.parametrize("method,kw", SW_METHODS)
def test_sliding_window_greedy_equals_hf_and_alone(windowed, method, kw):
    """Texts well past the window (4): rejected drafts leave invalid columns inside rows, and the window must be
    applied by position, not by column (transformers' own masks do the latter)."""
    target, draft, prompts, ids, mask, hf = windowed
    d = draft if method in ("speculative", "multi_draft") else None
    out = fastdecode.generate(target, ids, attention_mask=mask, draft=d, method=method, max_new_tokens=NEW,
                              temperature=0, pad_token_id=0, eos_token_id=[], **kw)
    assert torch.equal(out.sequences, hf)
    if d is not None or method == "prompt_lookup":
        assert out.stats.drafted_tokens > out.stats.accepted_tokens > 0   # accepted and rejected drafts
    for r, p in enumerate(prompts):
        alone = fastdecode.generate(target, torch.tensor([p]), draft=d, method=method, max_new_tokens=NEW,
                                    temperature=0, eos_token_id=[], **kw)
        assert torch.equal(out.sequences[r, ids.shape[1]:], alone.sequences[0, len(p):])


def test_window_by_column_would_be_wrong(monkeypatch):
    """The test above can see a window applied by column: with transformers' own mask (the 2D validity mask,
    window by column) batched speculative decoding gives other tokens on this case."""
    from fastdecode.decoding import batched

    target = tiny_lm("mistral", layers=2, seed=0, sliding_window=4)
    ids, mask = left_pad([torch.randint(1, 512, (n,), generator=torch.Generator().manual_seed(1)).tolist()
                          for n in LENS])
    hf = target.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False, pad_token_id=0)
    kw = dict(attention_mask=mask, draft=draft_of(target, 1), method="speculative", max_new_tokens=NEW,
              temperature=0, pad_token_id=0, eos_token_id=[], adaptive_draft=False, draft_length=1)
    assert torch.equal(fastdecode.generate(target, ids, **kw).sequences, hf)
    monkeypatch.setattr(batched.kv, "attention_layout", lambda model: (None, None))
    assert not torch.equal(fastdecode.generate(target, ids, **kw).sequences, hf)
