"""A model that returns NaN logits is an error on every path, never a silent token: greedy decoding took
argmax(NaN) (token 0) without a word on most paths before. The target's NaN, and the draft's, for every
method and engine, single rows and batches (the static batch's recorded forwards too), greedy and sampled."""
import pytest
import torch

import fastdecode
import fake_graphs
from tiny_models import draft_of, tiny_lm

METHODS = [("autoregressive", {}), ("speculative", {}), ("speculative", dict(verifier="block")),
           ("multi_draft", dict(num_drafts=2)), ("prompt_lookup", {}), ("entropy_switch", dict(entropy_threshold=1.0))]
ONE = torch.tensor([[1, 2, 3, 1, 2, 3]])
TWO = torch.tensor([[1, 2, 3, 1, 2, 3], [4, 5, 6, 4, 5, 6]])


def _broken(which: str):
    target = tiny_lm("llama", 2, seed=1)
    draft = draft_of(target)
    with torch.no_grad():
        (target if which == "target" else draft).lm_head.weight[0, 0] = float("nan")   # token 0's logit: NaN
    return target, draft


def _cases():
    for which in ("target", "draft"):
        for method, kw in METHODS:
            for engine in ("dynamic", "static"):
                for ids in (ONE, TWO):
                    skip = which == "draft" and method == "autoregressive"
                    if not skip:
                        yield which, method, kw, engine, ids


@pytest.mark.parametrize("temperature", [0.0, 1.0])
@pytest.mark.parametrize("which,method,kw,engine,ids", list(_cases()),
                         ids=lambda v: v if isinstance(v, str) else ("B2" if getattr(v, "shape", (1,))[0] == 2 else
                                                                     "B1" if hasattr(v, "shape") else str(v)))
def test_nan_logits_raise(which, method, kw, engine, ids, temperature):
    target, draft = _broken(which)
    with pytest.raises(ValueError, match="NaN or \\+inf logits"):
        fastdecode.generate(target, ids, draft=None if method == "autoregressive" else draft, method=method,
                            temperature=temperature, seed=0, max_new_tokens=6, cache_implementation=engine,
                            pad_token_id=0, eos_token_id=[], **kw)


@pytest.mark.parametrize("method", ["autoregressive", "speculative", "multi_draft"])
def test_nan_target_logits_raise_on_recorded_forwards(method, monkeypatch):
    fake_graphs.install(monkeypatch)
    target, draft = _broken("target")
    for ids in (ONE, TWO):
        with pytest.raises(ValueError, match="NaN or \\+inf logits"):
            fastdecode.generate(target, ids, draft=None if method == "autoregressive" else draft, method=method,
                                temperature=0, max_new_tokens=6, cache_implementation="static", compile="cudagraphs",
                                pad_token_id=0, eos_token_id=[])


def test_minus_inf_logits_are_allowed():
    """-inf is a masked token, not an error: a model whose logit for token 0 is always -inf decodes as usual."""
    target = tiny_lm("llama", 2, seed=1)
    with torch.no_grad():
        target.lm_head.weight[0] = 0.0
        target.lm_head.bias = torch.nn.Parameter(torch.zeros(target.lm_head.out_features))
        target.lm_head.bias[0] = float("-inf")
    ref = target.generate(ONE, max_new_tokens=6, do_sample=False)
    for engine in ("dynamic", "static"):
        out = fastdecode.generate(target, ONE, draft=draft_of(target), temperature=0, max_new_tokens=6,
                                  eos_token_id=[], cache_implementation=engine)
        assert torch.equal(out.sequences, ref)


@pytest.mark.parametrize("verifier", ["rrs_without_replacement", "greedy_draft", "spectr", "optimal"])
@pytest.mark.parametrize("engine", ["dynamic", "static"])
def test_nan_draft_under_every_multi_draft_verifier(verifier, engine):
    """Multi-draft decoding reads its distributions' NaN flags once per step, after drafting and the walk: a
    NaN draft row must still end in the NaN error, not in a crash of the drafting on the broken row (an empty
    draw of a distinct-token scheme gave a float token tensor to the next forward)."""
    target, draft = _broken("draft")
    for ids in (ONE, TWO):
        with pytest.raises(ValueError, match="NaN or \\+inf logits"):
            fastdecode.generate(target, ids, draft=draft, method="multi_draft", num_drafts=3, verifier=verifier,
                                temperature=1.0, seed=0, max_new_tokens=6, cache_implementation=engine,
                                pad_token_id=0, eos_token_id=[])
