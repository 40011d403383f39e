"""Tree attention and cache bookkeeping of multi-draft decoding, on the real code pair."""
import pytest
import torch

from fastdecode.config import MultiDraftConfig, SamplingConfig
from fastdecode.decoding import hf_cache as kv
from fastdecode.decoding.stream import TokenStream
from fastdecode.decoding.multi_draft import MultiDraftDecoder
from fastdecode.decoding.tree import DraftTree, score_nodes
from fastdecode.stats import DecodeStats


def _random_tree(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    tree = DraftTree()
    frontier = [(-1, 4)]
    for _ in range(3):
        nxt = []
        for node, m in frontier:
            draws = torch.randint(0, 40, (m,), generator=g).tolist()  # few ids -> duplicates merge
            nxt += tree.add_children(node, draws)
        frontier = nxt
    return tree


@torch.inference_mode()
def test_tree_logits_equal_plain_forward_of_each_prefix(code_pair, stdlib_prompts):
    target = code_pair[0]
    prompt = stdlib_prompts[1][:20]
    tree = _random_tree(8192)
    assert len(tree) > 6 and len(set(tree.depth)) == 3
    cache = kv.new_cache(target)
    kv.forward(target, torch.tensor([prompt[:12]]), cache)       # part of the context already cached
    logits = score_nodes(target, cache, tree, prompt[12:], list(range(len(tree))), 12, {}, len(prompt) - 1)
    assert kv.cache_length(cache) == len(prompt) + len(tree)
    for n in range(len(tree)):
        text = prompt + [tree.tokens[a] for a in tree.ancestors(n)]
        ref = target(torch.tensor([text])).logits[0, -1].float()
        torch.testing.assert_close(logits[n + 1], ref, atol=2e-4, rtol=1e-4)
    ref_root = target(torch.tensor([prompt])).logits[0, -1].float()
    torch.testing.assert_close(logits[0], ref_root, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("temperature,verifier", [(0.0, "rrs"), (1.0, "rrs"), (1.0, "spectr")])
@torch.inference_mode()
def test_caches_equal_fresh_forward_after_steps(code_pair, stdlib_prompts, temperature, verifier):
    target, draft, _ = code_pair
    prompt = torch.tensor([stdlib_prompts[2][:24]])
    stream = TokenStream(prompt, 30, set())
    dec = MultiDraftDecoder(target, draft, stream, SamplingConfig(temperature), MultiDraftConfig(3, 3, verifier),
                            torch.Generator().manual_seed(0), DecodeStats())
    for _ in range(4):
        dec.step()
        for model, cache in ((target, dec.tcache), (draft, dec.dcache)):
            n = kv.cache_length(cache)
            assert n <= stream.length - 1
            fresh = kv.new_cache(model)
            kv.forward(model, torch.tensor([stream.tokens[:n]]), fresh)
            for a, b in zip(cache.layers, fresh.layers):
                torch.testing.assert_close(a.keys, b.keys, atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(a.values, b.values, atol=1e-4, rtol=1e-4)
        assert kv.cache_length(dec.tcache) == stream.length - 1
