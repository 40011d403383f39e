"""Host reads of a multi-draft step on the static engine (recorded forwards, stand-in graphs on the CPU): a
read stalls a GPU's queue, so the step reads the device once per depth for its draws (twice for the
distinct-token schemes), once per visited node for the walk's decisions, and once for the step's NaN / +inf
check, not once per distribution, draw or verifier argument check (about 40 reads per step before)."""
import pytest
import torch

import fake_graphs
import fastdecode
from tiny_models import draft_of, tiny_lm

READS = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__")


def _reads_per_step(monkeypatch, **kw) -> float:
    fake_graphs.install(monkeypatch)
    target = tiny_lm("llama", 2, seed=1)
    draft = draft_of(target)
    prompt = torch.tensor([[1, 2, 3, 4, 5, 6]])
    args = dict(draft=draft, method="multi_draft", max_new_tokens=24, seed=0, eos_token_id=[],
                cache_implementation="static", compile="cudagraphs", **kw)
    fastdecode.generate(target, prompt, **args)   # records the forwards
    count = [0]
    for name in READS:
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            count[0] += 1
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    out = fastdecode.generate(target, prompt, **args)
    monkeypatch.undo()
    return count[0] / out.stats.target_calls


@pytest.mark.parametrize("verifier,per_depth", [("rrs", 1), ("spectr", 1), ("rrs_without_replacement", 2)])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_reads_per_step(monkeypatch, verifier, per_depth, temperature):
    depth = 3
    reads = _reads_per_step(monkeypatch, num_drafts=3, draft_length=depth, verifier=verifier,
                            temperature=temperature)
    # drafts: per_depth reads at each depth; the walk: at most depth + 1 (decisions, bonus); the step's
    # NaN check and its commit: 2; the stream's bookkeeping and the policy: a few
    assert reads <= per_depth * depth + (depth + 1) + 4, f"{reads:.1f} host reads per step"
