"""fastdecode.verification routes the lossless rules through the kernel dispatch, which runs the fused
verify kernel where ``kernels.use_triton(p)`` says so (CUDA tensors) and its PyTorch reference elsewhere.
On the CPU the dispatch is forced on here and the kernel runs in the Triton interpreter; bench/kernels_gpu_check.py runs the same tests on a GPU, unforced.

Checked: each rule calls its kernel; given the same generator the dispatched result equals the kernel's
PyTorch reference fed the same draws (so the rule, k, replacement flag and rho* are passed right); the
dispatched tokens follow p (chi-square, with a biased variant shown to fail; GPU only); rows the kernel does not
cover (without replacement past q's support) stay on the PyTorch path; on CPU tensors the dispatch picks the
reference.
"""
import os

DEVICE = os.environ.get("FASTDECODE_TEST_DEVICE", "cpu")
os.environ.setdefault("TRITON_INTERPRET", "1" if DEVICE == "cpu" else "0")  # before triton is imported

import pytest
import torch

from interpret import kernel_module

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("error")

import fastdecode.kernels as K  # noqa: E402
from fastdecode.verification import sample_drafts, verify  # noqa: E402
from fastdecode.verification.spectr import rho_star  # noqa: E402

# method -> (kernel function name in fastdecode.kernels, draft scheme)
RULES = {
    "speculative": ("verify_speculative", "iid"),
    "rrs": ("verify_rrs", "iid"),
    "rrs_without_replacement": ("verify_rrs", "without_replacement"),
    "spectr": ("verify_kseq", "iid"),
}


@pytest.fixture
def fused(monkeypatch):
    """Force the Triton dispatch (on the CPU: the interpreter) and count the kernel calls."""
    kernel_module("verify", DEVICE)
    if DEVICE == "cpu":
        monkeypatch.setattr(K, "use_triton", lambda t: True)
    calls = {}
    for name in ("verify_speculative", "verify_rrs", "verify_kseq"):
        real = getattr(K, name)

        def spy(*a, _real=real, _name=name, **kw):
            calls[_name] = calls.get(_name, 0) + 1
            return _real(*a, **kw)
        monkeypatch.setattr(K, name, spy)
    return calls


def pair(n, V, seed):
    g = torch.Generator().manual_seed(seed)
    lp = torch.randn(n, V, generator=g, dtype=torch.float64) * 2
    p = torch.softmax(lp, -1)
    q = torch.softmax(lp + 1.5 * torch.randn(n, V, generator=g, dtype=torch.float64), -1)
    return p.float().to(DEVICE), q.float().to(DEVICE)


def gen(seed):
    return torch.Generator(device=DEVICE).manual_seed(seed)


@pytest.mark.parametrize("method", list(RULES))
@pytest.mark.parametrize("V,k", [(50, 3), (8193, 4)])
def test_dispatch_calls_the_kernel_with_the_rules_draws(fused, method, V, k):
    k = 1 if method == "speculative" else k
    p, q = pair(6, V, seed=V + k)
    p[0], q[0] = q[0], p[0]  # a row with the roles swapped: more rejections
    drafts = sample_drafts(q, k, RULES[method][1], gen(1))
    got = verify(method, p, q, drafts, generator=gen(7))
    assert fused == {RULES[method][0]: 1}

    # the same draws, in the same order, fed to the PyTorch reference (on the CPU)
    g = gen(7)
    if method == "speculative":
        u = torch.rand(6, generator=g, device=DEVICE, dtype=torch.float64)
    else:
        u = torch.rand((6, k), generator=g, device=DEVICE, dtype=torch.float64)
    noise = torch.empty(p.shape, dtype=torch.float32, device=DEVICE).exponential_(generator=g)
    cpu = [t.cpu() for t in (p, q, drafts, u, noise)]
    if method == "speculative":
        want = K.verify_speculative_reference(*cpu)
    elif method == "spectr":
        want = K.verify_kseq_reference(*cpu, rho_star(cpu[0].double(), cpu[1].double(), k)[0])
    else:
        want = K.verify_rrs_reference(*cpu, replacement=method == "rrs")
    assert torch.equal(got.tokens.cpu(), want[0])
    assert torch.equal(got.draft_index.cpu(), want[1])
    assert torch.equal(got.accepted.cpu(), want[1] >= 0)
    assert got.tokens.device == p.device


def _chi2_pvalue(tokens, p):
    from scipy.stats import chisquare

    counts = torch.bincount(tokens.cpu(), minlength=p.shape[-1]).double()
    expected = p.double() * tokens.numel()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "emitted a token that p gives no mass"
    return chisquare(counts[keep].numpy(), expected[keep].numpy()).pvalue


@pytest.mark.parametrize("method", ["rrs", "rrs_without_replacement", "spectr"])
def test_dispatched_tokens_follow_p(fused, method):
    """4000 rows: seconds on a GPU, minutes in the interpreter, so GPU only (bench/kernels_gpu_check.py);
    on the CPU the equality with the references above, whose output laws tests/kernels/test_verify.py
    checks, carries the same claim."""
    if DEVICE == "cpu":
        pytest.skip("statistical test of the dispatched kernel: run on a GPU by bench/kernels_gpu_check.py")
    pytest.importorskip("scipy")
    p = torch.tensor([0.40, 0.25, 0.15, 0.10, 0.06, 0.04, 0.0], dtype=torch.float64)
    q = torch.tensor([0.05, 0.10, 0.20, 0.30, 0.15, 0.10, 0.10], dtype=torch.float64)
    n, k = 4000, 3
    P, Q = (t.to(DEVICE).expand(n, -1).contiguous() for t in (p, q))
    drafts = sample_drafts(Q, k, RULES[method][1], gen(3))
    tokens = verify(method, P, Q, drafts, generator=gen(4)).tokens
    assert fused == {RULES[method][0]: 1}
    assert _chi2_pvalue(tokens, p) > 1e-4
    # the same test catches a verifier fed drafts from another q (here: uniform drafts)
    wrong = sample_drafts(torch.full_like(Q, 1 / 7), k, RULES[method][1], gen(5))
    assert _chi2_pvalue(verify(method, P, Q, wrong, generator=gen(6)).tokens, p) < 1e-6


def test_without_replacement_past_qs_support_stays_on_pytorch(fused):
    q = torch.tensor([[0.7, 0.3, 0.0, 0.0, 0.0]], device=DEVICE)
    p = torch.tensor([[0.1, 0.2, 0.3, 0.2, 0.2]], device=DEVICE)
    drafts = sample_drafts(q, 4, "without_replacement", gen(0))  # two uniform extra draws with q = 0
    out = verify("rrs_without_replacement", p, q, drafts, generator=gen(1))
    assert fused == {}
    assert 0 <= int(out.tokens[0]) < 5


def test_cpu_tensors_use_the_reference_by_default(monkeypatch):
    """The rules always call the kernel dispatch; on CPU tensors it picks the PyTorch reference."""
    if DEVICE != "cpu":
        pytest.skip("CPU dispatch")
    called = []
    real = K.verify_rrs_reference
    monkeypatch.setattr(K, "verify_rrs_reference", lambda *a, **kw: called.append(1) or real(*a, **kw))
    p, q = pair(2, 20, seed=0)
    verify("rrs", p, q, sample_drafts(q, 2, "iid", gen(0)), generator=gen(1))
    assert called == [1] and not K.use_triton(p)
