"""Lambda attention on real models: equality with vanilla attention for short inputs, decode == prefill,
the bounded cache (rollback, tree paths), unsupported models, and generate() with it."""
from __future__ import annotations

import pytest
import torch

import fastdecode
from fastdecode import LambdaAttention, lambda_attention
from fastdecode.attention import LambdaCache
from fastdecode.decoding import hf_cache as kv


def _ids(n, seed=0):
    return torch.randint(1, 8192, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.inference_mode()
def test_short_sequence_equals_vanilla(code_pair):
    target = code_pair[0]
    ids = _ids(200)
    vanilla = target(ids).logits
    target.set_attn_implementation("eager")
    try:
        eager = target(ids).logits
    finally:
        target.set_attn_implementation("sdpa")
    with lambda_attention(target, LambdaAttention(window=256, num_global=8)):
        lam = target(ids).logits
    assert target.config._attn_implementation == "sdpa"  # restored
    assert torch.equal(lam, eager)  # same arithmetic as eager attention, bit for bit
    torch.testing.assert_close(lam, vanilla, atol=1e-4, rtol=1e-4)
    with lambda_attention(target, LambdaAttention(window=64, num_global=8)):  # longer than the window: differs
        assert (target(ids).logits[0, -1] - vanilla[0, -1]).abs().max() > 1e-2


@torch.inference_mode()
def test_decode_and_chunked_prefill_equal_full_prefill(code_pair):
    target = code_pair[0]
    cfg = LambdaAttention(window=32, num_global=4)
    ids = _ids(150, seed=1)
    with lambda_attention(target, cfg):
        full = target(ids).logits[0]  # one forward, block-wise over the whole sequence
        cache = kv.new_cache(target)
        assert isinstance(cache, LambdaCache)
        rows = [kv.forward(target, ids[:, :50], cache)[0]]  # chunked prefill...
        for i in range(50, 150, 9):
            rows.append(kv.forward(target, ids[:, i:i + 9], cache)[0])
        step = kv.forward(target, ids[:, :1] * 0 + 7, cache)[0]  # ...then one decode token
        full_next = target(torch.cat([ids, ids[:, :1] * 0 + 7], 1)).logits[0, -1]
    torch.testing.assert_close(torch.cat(rows), full, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(step[-1], full_next, atol=2e-4, rtol=1e-4)
    assert kv.cache_length(cache) == 151
    assert isinstance(kv.new_cache(target), type(kv.new_cache(code_pair[1])))  # context left: DynamicCache again


@torch.inference_mode()
def test_cache_memory_is_bounded(code_pair):
    target = code_pair[0]
    cfg = LambdaAttention(window=16, num_global=4, max_rollback=8)
    with lambda_attention(target, cfg):
        cache = kv.new_cache(target)
        kv.forward(target, _ids(300), cache, logits_to_keep=1)  # long prefill in one call
        assert cache.stored_tokens() == 4 + 15 + 8
        sizes = []
        for t in range(40):
            kv.forward(target, torch.tensor([[t + 1]]), cache, logits_to_keep=1)
            sizes.append(cache.nbytes())
    assert kv.cache_length(cache) == 340
    assert cache.stored_tokens() == 4 + 16 + 8
    assert max(sizes[10:]) == min(sizes[10:])  # flat
    per_token = 2 * 10 * 6 * 64 * 4  # keys + values, 10 layers, 6 heads, head_dim 64, float32
    assert max(sizes) == (4 + 16 + 8) * per_token


@torch.inference_mode()
def test_rollback_and_error_past_eviction(code_pair):
    target = code_pair[0]
    cfg = LambdaAttention(window=16, num_global=2, max_rollback=4)
    ids = _ids(80, seed=2)
    with lambda_attention(target, cfg):
        cache = kv.new_cache(target)
        kv.forward(target, ids[:, :60], cache)
        kv.forward(target, ids[:, 60:66], cache)  # e.g. pending token + 5 drafts, rolled back within the chunk
        kv.crop(cache, 62)
        for i in range(62, 70):  # a draft model's one-token steps, then a rollback across 4 of them
            kv.forward(target, ids[:, i:i + 1], cache)
        kv.crop(cache, 66)
        got = kv.forward(target, ids[:, 66:67], cache)[0, -1]
        want = target(ids[:, :67]).logits[0, -1]
        torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)
        with pytest.raises(ValueError, match="evicted.*max_rollback"):
            kv.crop(cache, 60)  # more than max_rollback back


@torch.inference_mode()
def test_tree_mask_and_select(code_pair):
    """Multi-draft story: a 4D tree mask with per-node position ids on top of an evicting cache, then
    select() keeps one path; both equal a fresh forward over the path's own text."""
    target = code_pair[0]
    cfg = LambdaAttention(window=16, num_global=2)
    prefix = _ids(40, seed=3)
    x0, a, b, c = 11, 22, 33, 44
    # storage 40: x0 (pos 40); 41: a (pos 41); 42: b (pos 41, sibling of a); 43: c (pos 42, child of a)
    tree = torch.tensor([[x0, a, b, c]])
    pos = torch.tensor([[40, 41, 41, 42]])
    vis = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]], dtype=torch.bool)
    mask = torch.cat([torch.ones(4, 40, dtype=torch.bool), vis], 1)[None, None]  # [1, 1, 4, 44]
    with lambda_attention(target, cfg):
        def fresh(tokens):
            return target(torch.cat([prefix, torch.tensor([tokens])], 1)).logits[0, -1]
        for path, keep in (([x0, b], [42]), ([x0, a, c], [41, 43])):
            cache = kv.new_cache(target)
            kv.forward(target, prefix, cache)
            logits = kv.forward(target, tree, cache, position_ids=pos, attention_mask=mask)[0]
            node = {b: 2, c: 3}[path[-1]]
            torch.testing.assert_close(logits[node], fresh(path), atol=2e-4, rtol=1e-4)
            kv.select(cache, torch.cat([torch.arange(41), torch.tensor(keep)]))
            assert kv.cache_length(cache) == 40 + len(path)
            nxt = kv.forward(target, torch.tensor([[55]]), cache)[0, -1]
            torch.testing.assert_close(nxt, fresh(path + [55]), atol=2e-4, rtol=1e-4)


def _tiny(config_cls, **kw):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_config(config_cls(**kw)).eval()


@pytest.mark.parametrize("name,kw,match", [
    ("GPT2Config", dict(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=32), "'gpt2'.*absolute"),
    ("BloomConfig", dict(n_layer=1, n_head=2, hidden_size=16, vocab_size=50), "'bloom'.*ALiBi"),
    ("MptConfig", dict(n_layers=1, n_heads=2, d_model=16, vocab_size=50, max_seq_len=32), "'mpt'.*ALiBi"),
])
def test_unsupported_models_raise(name, kw, match):
    import transformers
    model = _tiny(getattr(transformers, name), **kw)
    with pytest.raises(ValueError, match=match):
        with lambda_attention(model, LambdaAttention(window=8, num_global=2)):
            pass
    with pytest.raises(ValueError, match=match):
        fastdecode.generate(model, torch.tensor([[1, 2, 3]]), max_new_tokens=2, temperature=0,
                            lambda_attention=LambdaAttention(window=8, num_global=2))


@pytest.mark.parametrize("name", ["MistralConfig", "Qwen2Config"])
@torch.inference_mode()
def test_other_rope_families(name):
    import transformers
    model = _tiny(getattr(transformers, name), num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  hidden_size=32, intermediate_size=64, vocab_size=50, max_position_embeddings=64)
    ids = torch.randint(0, 50, (1, 40), generator=torch.Generator().manual_seed(0))
    vanilla = model(ids).logits
    with lambda_attention(model, LambdaAttention(window=40, num_global=2)):
        torch.testing.assert_close(model(ids).logits, vanilla, atol=1e-5, rtol=1e-5)
    with lambda_attention(model, LambdaAttention(window=8, num_global=2)):
        full = model(ids).logits[0]
        cache = kv.new_cache(model)
        rows = [kv.forward(model, ids[:, i:i + 5], cache)[0] for i in range(0, 40, 5)]
    torch.testing.assert_close(torch.cat(rows), full, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_generate_past_training_length(code_pair, stdlib_prompts):
    """Greedy decoding with window 256 past 256 tokens: every token is the argmax of a full Lambda forward
    over the text so far, and speculative decoding emits exactly the same tokens."""
    target, draft, tok = code_pair
    from prompts import stdlib_corpus
    prompt = torch.tensor([stdlib_corpus(tok, 240)])
    cfg = LambdaAttention(window=256, num_global=8)
    ar = fastdecode.generate(target, prompt, method="autoregressive", max_new_tokens=40, temperature=0,
                             lambda_attention=cfg, eos_token_id=-1)
    seq = ar.sequences
    assert seq.shape[1] == 280
    with lambda_attention(target, cfg):
        logits = target(seq[:, :-1]).logits[0, 239:]
    top2 = logits.topk(2, -1).values
    clear = (top2[:, 0] - top2[:, 1]) > 1e-3  # skip numerical near-ties
    assert torch.equal(logits.argmax(-1)[clear], seq[0, 240:][clear])
    spec = fastdecode.generate(target, prompt, draft=draft, method="speculative", max_new_tokens=40, temperature=0,
                               lambda_attention=cfg, eos_token_id=-1)
    assert torch.equal(spec.sequences, seq)
    assert target.config._attn_implementation == "sdpa" and draft.config._attn_implementation == "sdpa"


@torch.inference_mode()
def test_speculative_equals_autoregressive_deep_into_eviction(code_pair):
    """Small window so that both caches evict for most of the run and every rejection rolls back over
    evicted-window territory (the draft's cache across several one-token chunks)."""
    target, draft, _ = code_pair
    cfg = LambdaAttention(window=32, num_global=4, max_rollback=16)
    prompt = _ids(100, seed=4)
    kw = dict(max_new_tokens=48, temperature=0, lambda_attention=cfg, eos_token_id=-1)
    ar = fastdecode.generate(target, prompt, method="autoregressive", **kw)
    spec = fastdecode.generate(target, prompt, draft=draft, method="speculative", max_draft_length=16, fallback="off",
                               **kw)
    assert torch.equal(spec.sequences, ar.sequences)
    assert spec.stats.target_calls < 48  # drafts were accepted and rejected along the way
