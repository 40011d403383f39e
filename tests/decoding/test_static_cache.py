"""decoding/static_cache.py: the slot cache (writes at one shared start, moves of an accepted path) and the
runner's plain forwards, which attend to the used slots only, with the same logits as over the whole
capacity and as a fresh forward."""
import torch

from fastdecode.decoding.static_cache import SlotCache, StaticRunner
from tiny_models import tiny_llama

IDS = torch.tensor([[1, 4, 2, 8, 5, 7, 3, 9]])


@torch.inference_mode()
def test_eager_forward_attends_to_the_used_slots_only():
    model = tiny_llama(5, vocab=11)
    full = model(input_ids=IDS).logits[0].float()
    runner = StaticRunner(model, 128, "eager")
    runner.prefill(IDS[:, :5])
    assert runner.cache.width == 5
    out = runner.forward(IDS[:, 5:], 5)
    assert runner.cache.width == 8 and runner.cache.layers[0].keys.shape[2] == 128   # the buffer stays whole
    torch.testing.assert_close(out, full[5:], rtol=1e-4, atol=1e-4)
    runner.cache.width = None                        # what a recorded forward sees: the whole capacity
    wide = runner._forward(IDS[:, 5:])
    torch.testing.assert_close(out, wide, rtol=1e-5, atol=1e-5)


def test_slot_cache_move_compacts_a_path_in_every_layer():
    cache = SlotCache(2, 16, "cpu")
    for layer in cache.layers:
        layer.lazy_initialization(torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2))
        layer.keys.copy_(torch.arange(16.0)[None, None, :, None].expand(1, 1, 16, 2))
        layer.values.copy_(-layer.keys)
    cache.move([4, 7, 9], 4)                         # slot 4 is in place; 7 -> 5, 9 -> 6
    for layer in cache.layers:
        assert layer.keys[0, 0, :8, 0].tolist() == [0, 1, 2, 3, 4, 7, 9, 7]
        assert torch.equal(layer.values, -layer.keys)
