"""The KV-cache shims of fastdecode.decoding.hf_cache (new_cache, cache_length, crop, select, forward,
fit_width) on a tiny random Llama."""
from __future__ import annotations

import inspect

import pytest
import torch
from transformers import DynamicCache

from fastdecode.decoding import hf_cache as kv
from tiny_models import tiny_llama

@pytest.fixture(scope="module")
def model():
    return tiny_llama(5, vocab=11)


IDS = torch.tensor([[1, 4, 2, 8, 5, 7]])


@torch.inference_mode()
def _full(model, ids):
    return model(input_ids=ids).logits.float()


def test_new_cache_is_empty_and_honours_a_factory(model):
    c = kv.new_cache(model)
    assert isinstance(c, DynamicCache) and kv.cache_length(c) == 0
    sentinel = object()
    other = tiny_llama(6, vocab=11)
    other._fastdecode_new_cache = lambda: sentinel
    assert kv.new_cache(other) is sentinel


def test_forward_uses_the_right_cache_keyword(model):
    params = inspect.signature(type(model).forward).parameters
    assert kv._cache_kwarg(type(model)) in params


@torch.inference_mode()
def test_forward_incremental_equals_full(model):
    want = _full(model, IDS)
    c = kv.new_cache(model)
    got = kv.forward(model, IDS[:, :4], c)
    assert got.dtype == torch.float32 and got.shape == (1, 4, 11) and kv.cache_length(c) == 4
    torch.testing.assert_close(got, want[:, :4], atol=1e-5, rtol=1e-5)
    for i in (4, 5):  # one token at a time, positions continue after the cache
        step = kv.forward(model, IDS[:, i:i + 1], c)
        torch.testing.assert_close(step[:, 0], want[:, i], atol=1e-5, rtol=1e-5)
    assert kv.cache_length(c) == 6
    last = kv.forward(model, IDS, kv.new_cache(model), logits_to_keep=1)
    assert last.shape == (1, 1, 11)
    torch.testing.assert_close(last[:, 0], want[:, -1], atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_crop_rolls_back(model):
    want = _full(model, IDS)
    c = kv.new_cache(model)
    kv.forward(model, torch.tensor([[1, 4, 2, 9, 9, 9]]), c)    # three tokens that a rejection discards
    kv.crop(c, 3)
    assert kv.cache_length(c) == 3
    got = kv.forward(model, IDS[:, 3:], c)
    torch.testing.assert_close(got, want[:, 3:], atol=1e-5, rtol=1e-5)
    kv.crop(c, 100)                                             # longer than the cache: nothing to do
    assert kv.cache_length(c) == 6
    with pytest.raises(ValueError, match="negative length"):
        kv.crop(c, -1)


@torch.inference_mode()
def test_select_keeps_the_given_positions_in_order(model):
    c = kv.new_cache(model)
    kv.forward(model, IDS, c)
    before = [(layer.keys.clone(), layer.values.clone()) for layer in c.layers]
    pos = torch.tensor([0, 1, 4])
    kv.select(c, pos)
    assert kv.cache_length(c) == 3
    for (k, v), layer in zip(before, c.layers):
        assert torch.equal(layer.keys, k.index_select(-2, pos)) and torch.equal(layer.values, v.index_select(-2, pos))


@torch.inference_mode()
def test_select_of_a_prefix_equals_crop(model):
    want = _full(model, IDS)
    c = kv.new_cache(model)
    kv.forward(model, IDS, c)
    kv.select(c, torch.arange(4))
    got = kv.forward(model, IDS[:, 4:], c)
    torch.testing.assert_close(got, want[:, 4:], atol=1e-5, rtol=1e-5)


def test_select_defers_to_a_cache_with_its_own_layout():
    class Own:
        seen = None

        def select_positions(self, positions):
            self.seen = positions

    c = Own()
    kv.select(c, torch.tensor([2, 0]))
    assert c.seen.tolist() == [2, 0]
