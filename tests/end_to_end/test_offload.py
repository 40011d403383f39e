"""Targets dispatched by accelerate (device_map with CPU and disk offload): inputs go to the execution
device, logits come back from the last one, and every method gives HF's greedy tokens."""
import pytest
import torch

import fastdecode
from fastdecode.decoding import hf_cache as kv
from tiny_models import draft_of, hf_greedy, tiny_lm

pytest.importorskip("accelerate")

MAPS = {
    "all_on_disk": {"": "disk"},
    "cpu_and_disk": {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                     "model.layers.1": "disk", "model.norm": "cpu", "lm_head": "disk"},
}


@pytest.mark.parametrize("name", sorted(MAPS))
def test_offloaded_target_equals_hf_greedy(name, tmp_path):
    from transformers import AutoModelForCausalLM

    target = tiny_lm("llama", 2, seed=1)
    target.save_pretrained(tmp_path / "target")
    offloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "target", device_map=MAPS[name],
                                                     offload_folder=tmp_path / "offload", dtype=torch.float32)
    assert kv.device(offloaded) == torch.device("cpu")
    draft = draft_of(target)
    prompt = torch.randint(0, 512, (1, 6), generator=torch.Generator().manual_seed(0))
    ref = hf_greedy(target, prompt, 12)
    for method, kw in [("autoregressive", {}), ("speculative", {}), ("multi_draft", dict(num_drafts=2)),
                       ("entropy_switch", dict(entropy_threshold=float("-inf"), speculate_when_large=True))]:
        out = fastdecode.generate(offloaded, prompt, draft=None if method == "autoregressive" else draft,
                                  method=method, temperature=0, max_new_tokens=12, **kw)
        assert torch.equal(out.sequences, ref), f"{name}: {method}"


@pytest.mark.parametrize("name", sorted(MAPS))
def test_offloaded_target_on_the_static_engine(name, tmp_path):
    """The static engine runs an offloaded model with plain forwards (accelerate's hooks bring the weights in
    at each forward, which a recorded forward could not replay): HF's greedy tokens for every method and for a
    batch; compile=True is refused with the reason."""
    from transformers import AutoModelForCausalLM

    target = tiny_lm("llama", 2, seed=1)
    target.save_pretrained(tmp_path / "target")
    offloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "target", device_map=MAPS[name],
                                                     offload_folder=tmp_path / "offload", dtype=torch.float32)
    draft = draft_of(target)
    prompt = torch.randint(0, 512, (1, 6), generator=torch.Generator().manual_seed(0))
    ref = hf_greedy(target, prompt, 12)
    kw = dict(temperature=0, max_new_tokens=12, cache_implementation="static")
    for method, extra in [("autoregressive", {}), ("speculative", {}), ("multi_draft", dict(num_drafts=2)),
                          ("prompt_lookup", {}),
                          ("entropy_switch", dict(entropy_threshold=float("-inf"), speculate_when_large=True))]:
        out = fastdecode.generate(offloaded, prompt, draft=None if method in ("autoregressive", "prompt_lookup")
                                  else draft, method=method, **kw, **extra)
        assert torch.equal(out.sequences, ref), f"{name}: static {method}"
    two = torch.cat([prompt, torch.randint(0, 512, (1, 6), generator=torch.Generator().manual_seed(1))])
    out = fastdecode.generate(offloaded, two, draft=draft, pad_token_id=0, eos_token_id=[], **kw).sequences
    assert torch.equal(out[1:], hf_greedy(target, two[1:], 12)) and torch.equal(out[:1], ref)
    with pytest.raises(ValueError, match="target is offloaded .*compile=None"):
        fastdecode.generate(offloaded, prompt, draft=draft, compile=True, **kw)


def test_a_model_split_across_devices_is_refused_by_the_static_engine():
    from fastdecode.decoding.static_cache import execution_devices, offloaded

    target = tiny_lm("llama", 2, seed=1)
    assert execution_devices(target) == set() and not offloaded(target)
    target.hf_device_map = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "lm_head": "cpu"}
    assert execution_devices(target) == {0, 1}
    with pytest.raises(ValueError, match="split across several devices"):
        fastdecode.generate(target, torch.tensor([[1, 2, 3]]), max_new_tokens=2, cache_implementation="static")
    target.hf_device_map = {"model": 0, "lm_head": "disk"}
    assert execution_devices(target) == {0} and offloaded(target)
    target.hf_device_map = {"": "disk"}
    assert execution_devices(target) == {"cpu"} and offloaded(target)
