"""kernels/__init__.py is the one dispatch: each op gives the same result whether it picks the Triton
kernel (forced here: the interpreter on the CPU) or the PyTorch reference (what CPU tensors get), for
the same inputs and the same noise; and the lossless rules, which always call it, emit the same tokens
for a seed either way (on a GPU: the same tokens on CPU and CUDA)."""
import pytest
import torch

pytest.importorskip("triton")

import fastdecode.kernels as K  # noqa: E402
from fastdecode.verification import sample_drafts, verify  # noqa: E402
from fastdecode.verification.optimal import build_race, race_uniforms  # noqa: E402


def both(monkeypatch, fn, *args, **kwargs):
    """(reference result, Triton-interpreter result) of the dispatcher fn on the same arguments."""
    assert not K.use_triton(args[0])  # CPU tensors: the reference
    want = fn(*args, **kwargs)
    monkeypatch.setattr(K, "use_triton", lambda t: True)
    got = fn(*args, **kwargs)
    monkeypatch.undo()
    return want, got


def pair(n, V, seed):
    g = torch.Generator().manual_seed(seed)
    lp = torch.randn(n, V, generator=g, dtype=torch.float64) * 2
    p = torch.softmax(lp, -1)
    q = torch.softmax(lp + 1.5 * torch.randn(n, V, generator=g, dtype=torch.float64), -1)
    return p.float(), q.float(), g


def test_probs_and_entropy(monkeypatch):
    logits = torch.randn(3, 300, generator=torch.Generator().manual_seed(0)) * 3
    for want, got in (both(monkeypatch, K.probs, logits, 0.8), both(monkeypatch, K.entropy, logits)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_probs_never_dispatches_its_kernel(monkeypatch):
    """The probs kernel was slower than its reference at every size measured on a GPU: the dispatch keeps the
    reference even where Triton would be used."""
    import importlib
    kp = importlib.import_module("fastdecode.kernels.probs")   # (the package's name `probs` is the dispatcher)
    monkeypatch.setattr(K, "use_triton", lambda t: True)
    monkeypatch.setattr(kp, "probs", lambda *a, **k: pytest.fail("the probs kernel was dispatched"))
    logits = torch.randn(2, 50)
    for kw in (dict(temperature=0.8), dict(temperature=1.0, top_k=5, top_p=0.9)):
        torch.testing.assert_close(K.probs(logits, **kw), K.probs_reference(logits, **kw))


@pytest.mark.parametrize("op", ["verify_speculative", "verify_rrs", "verify_rrs_without_replacement", "verify_kseq"])
def test_verify_ops_same_tokens_for_the_same_noise(monkeypatch, op):
    k = 1 if op == "verify_speculative" else 3
    p, q, g = pair(8, 300, seed=k)
    p[0], q[0] = q[0].clone(), p[0].clone()  # more rejections
    wor = op == "verify_rrs_without_replacement"
    drafts = torch.stack([torch.multinomial(q[i], k, replacement=not wor, generator=g) for i in range(8)])
    u = torch.rand(8, k, generator=g, dtype=torch.float64)
    noise = torch.empty(p.shape).exponential_(generator=g)
    extra = {"verify_rrs_without_replacement": {"replacement": False}, "verify_kseq": {"rho": torch.full((8,), 1.3)}}
    fn = getattr(K, "verify_rrs" if wor else op)
    want, got = both(monkeypatch, fn, p, q, drafts, u, noise, **extra.get(op, {}))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_optimal_select(monkeypatch):
    p, q, g = pair(4, 200, seed=5)
    k = 4
    st = build_race(p.double(), q.double(), k)
    ranks = st.rank.gather(1, torch.multinomial(q, k, replacement=True, generator=g))
    args = (ranks, race_uniforms(4, k, g, "cpu"), st.ell, st.own, st.first, st.last, st.base, st.cum, st.left,
            st.right, st.xs, st.xd)
    want, got = both(monkeypatch, K.optimal_select, *args)
    assert torch.equal(got, want)


def test_lambda_decode(monkeypatch):
    g = torch.Generator().manual_seed(0)
    B, H, HKV, D, m = 1, 4, 2, 16, 12
    q, q_far = (torch.randn(B, H, D, generator=g) for _ in range(2))
    k, v = (torch.randn(B, HKV, m, D, generator=g) for _ in range(2))
    kpos = torch.cat([torch.arange(2), torch.arange(20, 30)])  # two globals, then a window ending at 29
    want, got = both(monkeypatch, K.lambda_decode, q, q_far, k, v, k[:, :, :2], kpos, torch.tensor([29]), 8, 2,
                     D ** -0.5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["speculative", "rrs", "rrs_without_replacement", "spectr", "optimal"])
def test_rules_emit_the_same_tokens_for_a_seed(monkeypatch, method):
    k = 1 if method == "speculative" else 3
    p, q, _ = pair(6, 300, seed=11)
    scheme = "without_replacement" if method == "rrs_without_replacement" else "iid"
    drafts = sample_drafts(q, k, scheme, torch.Generator().manual_seed(1))

    def run(_p):
        return verify(method, p, q, drafts, generator=torch.Generator().manual_seed(7))

    want, got = both(monkeypatch, run, p)
    assert torch.equal(got.tokens, want.tokens) and torch.equal(got.draft_index, want.draft_index)
