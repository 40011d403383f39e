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
