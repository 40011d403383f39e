"""decoding/sampling.py: logits -> probabilities and tokens, the point-mass q of n-gram drafts, the
confidence signal and the finiteness check read at the loop's one sync."""
import torch

from fastdecode.config import SamplingConfig
from fastdecode.decoding import sampling as sm


def test_greedy_next_tokens_are_the_argmax_and_draw_no_noise():
    logits = torch.tensor([[0.1, 3.0, -1.0], [2.0, 0.0, 1.9]])
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert sm.next_tokens(logits, SamplingConfig(temperature=0.0), g).tolist() == [1, 0]
    assert torch.equal(g.get_state(), state)
    assert sm.next_token(logits[:1], SamplingConfig(temperature=0.0), g) == 1


def test_sampled_tokens_follow_the_seed_and_the_law():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).expand(20000, 3)
    cfg = SamplingConfig(temperature=1.0)
    a = sm.next_tokens(logits, cfg, torch.Generator().manual_seed(3))
    b = sm.next_tokens(logits, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    freq = torch.bincount(a, minlength=3).double() / a.numel()
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1], dtype=torch.double), atol=0.015)


def test_probs_applies_top_k():
    p = sm.probs(torch.tensor([[1.0, 2.0, 3.0, 0.0]]), SamplingConfig(temperature=1.0, top_k=2))
    assert p.dtype == torch.float32 and p[0, 0] == 0 and p[0, 3] == 0
    assert torch.isclose(p.sum(), torch.tensor(1.0)) and p[0, 2] > p[0, 1] > 0


def test_one_hot_confidence_and_all_finite():
    q = sm.one_hot(torch.tensor([2, 0]), 4)
    assert q.tolist() == [[0, 0, 1, 0], [1, 0, 0, 0]] and q.dtype == torch.float32
    c = sm.confidence(torch.tensor([[0.0, 0.0], [10.0, -10.0]]))
    assert torch.allclose(c, torch.tensor([0.5, 1.0]), atol=1e-6)
    assert bool(sm.all_finite(torch.ones(2), torch.zeros(3)))
    assert not bool(sm.all_finite(torch.ones(2), torch.tensor([0.0, float("nan")])))
    assert not bool(sm.all_finite(torch.tensor([float("inf")])))
    assert bool(sm.all_finite(torch.tensor([0.0, float("-inf")])))   # a masked token
