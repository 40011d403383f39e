"""Lambda attention with token trees (multi-draft decoding), on the real code pair, past the window and
with the bounded cache evicting: tree-node logits == a Lambda forward of each node's own prefix (one
target-style tree forward, and draft-style level by level on top of cached tree nodes), multi-draft
greedy == autoregressive greedy, and the caches after multi-draft steps == a fresh Lambda forward."""
from __future__ import annotations

import pytest
import torch

import fastdecode
from fastdecode import LambdaAttention, lambda_attention
from fastdecode.attention import context
from fastdecode.attention.lambda_cache import LambdaCache, LambdaLayer
from fastdecode.attention.layout import Layout
from fastdecode.config import MultiDraftConfig, SamplingConfig
from fastdecode.decoding import hf_cache as kv
from fastdecode.decoding.stream import TokenStream
from fastdecode.decoding.multi_draft import MultiDraftDecoder
from fastdecode.decoding.tree import DraftTree, score_nodes
from fastdecode.stats import DecodeStats

# small window, small rollback slack: the 48-token prompts are past the window and the caches evict
CFG = LambdaAttention(window=32, num_global=4, max_rollback=4)
ATOL, RTOL = 2e-4, 1e-4


def _random_tree(seed=0, k=4, depth=3):
    g = torch.Generator().manual_seed(seed)
    tree, frontier = DraftTree(), [(-1, k)]
    for _ in range(depth):
        nxt = []
        for node, m in frontier:
            nxt += tree.add_children(node, torch.randint(0, 40, (m,), generator=g).tolist())  # duplicates merge
        frontier = nxt
    return tree


def _levels(tree):
    return [[n for n in range(len(tree)) if tree.depth[n] == d] for d in sorted(set(tree.depth))]


def _fresh(model, tokens):
    """Last-position logits of one Lambda forward over ``tokens`` (no cache: the block-wise path)."""
    return model(torch.tensor([tokens])).logits[0, -1].float()


def _tree_errors(model, prompt, tree):
    """Max |logit error| of every tree node vs a fresh forward of its prefix: (one tree forward on top of
    a partly cached context, level by level on top of cached tree nodes). Also checks select + decode."""
    n_pre = len(prompt) - 3
    refs = {n: _fresh(model, prompt + [tree.tokens[a] for a in tree.ancestors(n)]) for n in range(len(tree))}
    # target style: pending context + every node in one forward
    cache = kv.new_cache(model)
    kv.forward(model, torch.tensor([prompt[:n_pre]]), cache)
    logits = score_nodes(model, cache, tree, prompt[n_pre:], list(range(len(tree))), n_pre, {}, len(prompt) - 1)
    assert cache.stored_tokens() < kv.cache_length(cache)  # the context was partly evicted
    err_one = max(float((logits[n + 1] - refs[n]).abs().max()) for n in refs)
    # draft style: context cached, then each level on top of the levels before it
    cache = kv.new_cache(model)
    kv.forward(model, torch.tensor([prompt]), cache)
    cached, err_levels = {}, 0.0
    for nodes in _levels(tree):
        out = score_nodes(model, cache, tree, [], nodes, len(prompt), cached, len(prompt) - 1)
        for i, n in enumerate(nodes):
            err_levels = max(err_levels, float((out[i] - refs[n]).abs().max()))
            cached[n] = len(cached)
    # keep the path to the last (deepest) node, then decode one token on top of it
    path = tree.ancestors(len(tree) - 1)
    kv.select(cache, torch.tensor(list(range(len(prompt))) + [len(prompt) + cached[n] for n in path]))
    text = prompt + [tree.tokens[n] for n in path]
    nxt = kv.forward(model, torch.tensor([[7]]), cache)[0, -1]
    err_select = float((nxt - _fresh(model, text + [7])).abs().max())
    return err_one, err_levels, err_select


@torch.inference_mode()
def test_tree_node_logits_equal_lambda_forward_of_their_prefix(code_pair, stdlib_prompts, monkeypatch):
    target, draft, _ = code_pair
    prompt = stdlib_prompts[1]
    assert len(prompt) > CFG.window + CFG.num_global + CFG.max_rollback
    tree = _random_tree()
    assert len(tree) > 8 and max(tree.depth) == 3 and len(set(tree.tokens)) < len(tree)
    for model in (target, draft):
        with lambda_attention(model, CFG):
            errs = _tree_errors(model, prompt, tree)
        assert max(errs) < ATOL, errs
    # broken variant: cached keys placed at their logical index (the positions a plain sequence would
    # have) instead of their recorded tree positions; level-by-level scoring must then disagree
    real_view = context.layout_view

    def logical_positions(layout, qpos, qhost, *args):
        c = len(qhost)
        fake = Layout(layout.spec, layout.idx, layout.idx[:len(layout.idx) - c] + list(qhost), layout.length)
        return real_view(fake, qpos, qhost, *args)
    monkeypatch.setattr(context, "layout_view", logical_positions)
    with lambda_attention(target, CFG):
        _, err_levels, _ = _tree_errors(target, prompt, tree)
    assert err_levels > 1e-2


@pytest.mark.parametrize("k,gamma", [(3, 3), (3, 4), (8, 3), (8, 4)])
@torch.inference_mode()
def test_multi_draft_greedy_equals_autoregressive(code_pair, stdlib_prompts, k, gamma):
    target, draft, _ = code_pair
    prompt = torch.tensor([stdlib_prompts[0]])
    kw = dict(temperature=0, max_new_tokens=60, lambda_attention=CFG, eos_token_id=-1)
    ar = _autoregressive(target, prompt, kw)
    md = fastdecode.generate(target, prompt, draft=draft, method="multi_draft", num_drafts=k, draft_length=gamma,
                             verifier="spectr", **kw)
    assert ar.shape[1] == prompt.shape[1] + 60 > 3 * CFG.window
    assert torch.equal(md.sequences, ar)
    assert md.stats.target_calls < 60 // 2  # drafts were accepted (and rejected) along the way


_AR: dict = {}


def _autoregressive(target, prompt, kw):
    key = tuple(prompt[0].tolist())
    if key not in _AR:
        _AR[key] = fastdecode.generate(target, prompt, method="autoregressive", **kw).sequences
    return _AR[key]


def _clone(cache: LambdaCache) -> LambdaCache:
    """A copy that shares the tensors and layouts (the cache replaces them, never writes into them)."""
    out = LambdaCache(len(cache.layers), cache.window, cache.num_global, cache.max_rollback,
                      tracker=cache.layers[0].tracker)
    for mine, theirs in zip(out.layers, cache.layers):
        mine.__dict__.update({k: v for k, v in theirs.__dict__.items()})
    return out


@pytest.mark.parametrize("temperature,k", [(0.0, 4), (1.0, 3)])
@torch.inference_mode()
def test_caches_after_multi_draft_steps_equal_fresh_forward(code_pair, stdlib_prompts, temperature, k):
    target, draft, _ = code_pair
    prompt = torch.tensor([stdlib_prompts[2]])
    stream = TokenStream(prompt, 40, set())
    with lambda_attention(target, CFG), lambda_attention(draft, CFG):
        dec = MultiDraftDecoder(target, draft, stream, SamplingConfig(temperature), MultiDraftConfig(k, 4, "spectr"),
                                torch.Generator().manual_seed(1), DecodeStats())
        for _ in range(6):
            dec.step()
            for model, cache in ((target, dec.tcache), (draft, dec.dcache)):
                assert isinstance(cache.layers[0], LambdaLayer)
                n = kv.cache_length(cache)
                assert n <= stream.length - 1
                assert cache.stored_tokens() <= CFG.num_global + CFG.window + CFG.max_rollback + 4 + 1
                assert cache.stored_tokens() < n  # evicting
                got = kv.forward(model, torch.tensor([stream.tokens[n:]]), _clone(cache))[0, -1]
                torch.testing.assert_close(got, _fresh(model, stream.tokens), atol=ATOL, rtol=RTOL)
    assert stream.new_tokens > 6


@torch.inference_mode()
def test_too_little_rollback_slack_raises(code_pair):
    """max_rollback below the draft length: selecting a short path after a deep tree would need evicted
    tokens, which must raise (naming max_rollback) rather than attend to fewer tokens."""
    target, draft, _ = code_pair
    prompt = torch.randint(1, 8192, (1, 40), generator=torch.Generator().manual_seed(3))
    cfg = LambdaAttention(window=16, num_global=4, max_rollback=0)
    with pytest.raises(ValueError, match="max_rollback = 0 is below the longest draft"):  # generate() checks first
        fastdecode.generate(target, prompt, draft=draft, method="multi_draft", num_drafts=4, draft_length=4,
                            verifier="spectr", temperature=0, max_new_tokens=24, lambda_attention=cfg, eos_token_id=-1)
    # the cache's own check, reached by driving the decoding loop without generate()'s check
    from fastdecode.attention import lambda_attention
    from fastdecode.config import MultiDraftConfig, SamplingConfig
    from fastdecode.decoding import multi_draft
    from fastdecode.decoding.stream import TokenStream
    from fastdecode.stats import DecodeStats

    with torch.inference_mode(), lambda_attention(target, cfg), lambda_attention(draft, cfg):
        with pytest.raises(ValueError, match="evicted.*max_rollback"):
            multi_draft.decode(target, draft, TokenStream(prompt, 24, set()), SamplingConfig(0.0),
                               MultiDraftConfig(4, 4, "spectr"), None, DecodeStats(method="multi_draft"))
