"""Fused verify kernel (speculative, RRS with / without replacement, K-SEQ) on the CPU under
TRITON_INTERPRET=1, at three levels:
1. hand-built cases with known tokens;
2. bit-exact agreement of kernel and ``*_reference`` given the same noise (same tokens, same index);
3. the references are lossless: emitted-token histograms over many rows match p (chi-square), the
   acceptance rates match their closed forms, and a deliberately broken variant fails the same test.
"""
import os

DEVICE = os.environ.get("FASTDECODE_TEST_DEVICE", "cpu")  # bench/kernels_gpu_check.py sets "cuda"
os.environ.setdefault("TRITON_INTERPRET", "1" if DEVICE == "cpu" else "0")  # before triton is imported

import pytest

from interpret import kernel_module
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("error")  # a NaN from a masked lane would warn in the interpreter


@pytest.fixture(scope="module")
def kv():
    return kernel_module("verify", DEVICE)


def on_device(fn):
    """A Triton host function run on DEVICE (the interpreter on the CPU), results back on the CPU."""
    def run(*args, **kwargs):
        out = fn(*(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args), **kwargs)
        return tuple(o.cpu() for o in out)
    return run


def pair(N, V, seed, spread=1.5, dtype=torch.float32):
    """Target p and a draft q that differs from it enough that all paths (accept, residual) occur."""
    g = torch.Generator().manual_seed(seed)
    lp = torch.randn(N, V, generator=g, dtype=torch.float64) * 2.0
    p = torch.softmax(lp, -1)
    q = torch.softmax(lp + spread * torch.randn(N, V, generator=g, dtype=torch.float64), -1)
    return p.to(dtype), q.to(dtype), g


def noise_for(N, V, K, g):
    u = torch.rand(N, K, generator=g, dtype=torch.float64)
    u[::3] = 1.0 - 1e-9  # every third row rejects whatever it can
    e = torch.empty(N, V).exponential_(generator=g)
    return u, e


def draw(q, K, g, replacement=True):
    return torch.multinomial(q.double(), K, replacement=replacement, generator=g)


def rho_star(p, q, k, iters=80):
    """K-SEQ's rho*: root in [1, k] of 1 - (1 - beta)^k = rho beta, beta = sum min(q, p / rho) (upper end)."""
    lo = torch.ones(p.shape[0], dtype=torch.float64)
    hi = torch.full_like(lo, float(k))
    p, q = p.double(), q.double()
    for _ in range(iters):
        mid = (lo + hi) / 2
        beta = torch.minimum(q, p / mid[:, None]).sum(-1)
        ok = 1 - (1 - beta) ** k <= mid * beta
        hi = torch.where(ok, mid, hi)
        lo = torch.where(ok, lo, mid)
    return hi


def run_both(kv, method, p, q, drafts, u, e, rho=None, **launch):
    if method == "speculative":
        args, fk, fr = (p, q, drafts, u[:, 0], e), kv.verify_speculative, kv.verify_speculative_reference
    elif method == "kseq":
        args, fk, fr = (p, q, drafts, u, e, rho), kv.verify_kseq, kv.verify_kseq_reference
    else:
        rep = method == "rrs"
        args, fk, fr = (p, q, drafts, u, e, rep), kv.verify_rrs, kv.verify_rrs_reference
    got, want = on_device(fk)(*args, **launch), fr(*args)
    return got, want


def assert_same(got, want, V, K):
    tok, idx = got
    assert tok.dtype == torch.int64 and idx.dtype == torch.int64
    assert ((tok >= 0) & (tok < V)).all() and ((idx >= -1) & (idx < K)).all()
    assert torch.equal(tok, want[0]), f"tokens differ at rows {(tok != want[0]).nonzero()[:, 0].tolist()}"
    assert torch.equal(idx, want[1])


METHODS = ["speculative", "rrs", "rrs_without_replacement", "kseq"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("V,N,K", [(100, 9, 8), (8192, 3, 4), (8193, 3, 3), (32000, 2, 2), (151936, 1, 2)])
def test_kernel_equals_reference(kv, method, V, N, K):
    K = 1 if method == "speculative" else K
    p, q, g = pair(N, V, seed=V + K)
    drafts = draw(q, K, g, replacement=method != "rrs_without_replacement")
    u, e = noise_for(N, V, K, g)
    rho = rho_star(p, q, K) if method == "kseq" else None
    for split in ((1, 3, None) if V <= 8193 else (None,)):
        got, want = run_both(kv, method, p, q, drafts, u, e, rho, split=split)
        assert_same(got, want, V, K)
    if V == 100:  # every path occurred: accepted drafts and residual tokens
        assert (want[1] >= 0).any() and (want[1] == -1).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("method", METHODS)
def test_half_precision_probabilities(kv, method, dtype):
    V, N, K = 1000, 6, 1 if method == "speculative" else 3
    p, q, g = pair(N, V, seed=7, dtype=dtype)
    drafts = draw(q, K, g, replacement=method != "rrs_without_replacement")
    u, e = noise_for(N, V, K, g)
    rho = rho_star(p, q, K) if method == "kseq" else None
    got, want = run_both(kv, method, p, q, drafts, u, e, rho, block=256)
    assert_same(got, want, V, K)


def test_hand_built_cases(kv):
    V = 5
    onehot = lambda i: torch.nn.functional.one_hot(torch.tensor([i]), V).double()  # noqa: E731
    uniform = torch.full((1, V), 1.0 / V, dtype=torch.float64)
    e = torch.ones(1, V)
    u = torch.tensor([0.5], dtype=torch.float64)
    for f in (on_device(kv.verify_speculative), kv.verify_speculative_reference):
        assert f(onehot(3), onehot(3), torch.tensor([[3]]), u, e) == (torch.tensor([3]), torch.tensor([0]))
        # p(0) = 0: rejected; residual max(p - q, 0) is all on token 2
        assert f(onehot(2), uniform, torch.tensor([[0]]), u, e) == (torch.tensor([2]), torch.tensor([-1]))
        # a zero exponential draw wins the race among tokens with residual mass
        p = torch.tensor([[0.1, 0.4, 0.1, 0.3, 0.1]], dtype=torch.float64)
        ez = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0]])
        assert f(p, uniform, torch.tensor([[0]]), u, ez) == (torch.tensor([3]), torch.tensor([-1]))
        # p == q and a draft outside q's support: rejected, empty residual -> sample p itself
        pq = torch.tensor([[0.0, 0.5, 0.25, 0.25, 0.0]], dtype=torch.float64)
        er = torch.tensor([[1.0, 1.0, 0.1, 1.0, 1.0]])
        assert f(pq, pq, torch.tensor([[4]]), u, er) == (torch.tensor([2]), torch.tensor([-1]))
    one = torch.ones(1, 1)
    assert on_device(kv.verify_rrs)(one, one, torch.zeros(1, 3, dtype=torch.long), torch.full((1, 3), 0.9, dtype=torch.float64),
                         one) == (torch.tensor([0]), torch.tensor([0]))
    # RRS without replacement never emits a rejected draft as the residual
    p = torch.tensor([[0.3, 0.3, 0.2, 0.2, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.4, 0.4, 0.1, 0.1, 0.0]], dtype=torch.float64)
    d = torch.tensor([[0, 1]])
    uu = torch.full((1, 2), 1 - 1e-12, dtype=torch.float64)
    for f in (on_device(kv.verify_rrs), kv.verify_rrs_reference):
        tok, idx = f(p, q, d, uu, torch.tensor([[1e-3, 1e-3, 1.0, 2.0, 1.0]]), replacement=False)
        assert idx.item() == -1 and tok.item() == 2


def test_speculative_rule_matches_the_verification_module(kv):
    """k = 1 accepts exactly when fastdecode.verification.token does: u q(x) < p(x) and q(x) > 0."""
    N, V = 64, 50
    p, q, g = pair(N, V, seed=11)
    x = draw(q, 1, g)
    u, e = noise_for(N, V, 1, g)
    tok, idx = on_device(kv.verify_speculative)(p, q, x, u[:, 0], e)
    px, qx = p.double().gather(1, x)[:, 0], q.double().gather(1, x)[:, 0]
    assert torch.equal(idx == 0, (u[:, 0] * qx < px) & (qx > 0))


# ---- level 3: the references are lossless (the kernel equals them bit for bit, tested above) ----
def emitted(kv, method, p, q, k, n, g, broken=False):
    """Tokens emitted by ``n`` independent verifications of one (p, q) pair."""
    P, Q = p.expand(n, -1).contiguous(), q.expand(n, -1).contiguous()
    drafts = draw(Q, k, g, replacement=method != "rrs_without_replacement")
    u = torch.rand(n, k, generator=g, dtype=torch.float64)
    u = u * 0.5 if broken else u  # broken: accepts twice as easily
    e = torch.empty(n, p.shape[1]).exponential_(generator=g)
    if method == "speculative":
        return kv.verify_speculative_reference(P, Q, drafts, u[:, 0], e)
    if method == "kseq":
        return kv.verify_kseq_reference(P, Q, drafts, u, e, rho_star(p, q, k).expand(n).contiguous())
    return kv.verify_rrs_reference(P, Q, drafts, u, e, method == "rrs")


def chi2_pvalue(tokens, p):
    from scipy.stats import chisquare

    counts = torch.bincount(tokens, minlength=p.shape[-1]).double()
    expected = p[0].double() * tokens.numel()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "emitted a token that p gives no mass"
    return chisquare(counts[keep].numpy(), expected[keep].numpy()).pvalue


@pytest.mark.parametrize("method", METHODS)
def test_references_are_lossless(kv, method):
    pytest.importorskip("scipy")
    p = torch.tensor([[0.40, 0.25, 0.15, 0.10, 0.06, 0.04, 0.0]], dtype=torch.float64)
    q = torch.tensor([[0.05, 0.10, 0.20, 0.30, 0.15, 0.10, 0.10]], dtype=torch.float64)
    k = 1 if method == "speculative" else 3
    g = torch.Generator().manual_seed(5)
    n = 30000
    tokens, index = emitted(kv, method, p, q, k, n, g)
    assert chi2_pvalue(tokens, p) > 1e-4
    broken, _ = emitted(kv, method, p, q, k, n, g, broken=True)
    assert chi2_pvalue(broken, p) < 1e-6, "the test cannot tell a biased verifier from a lossless one"
    # acceptance rates against closed forms (docs/algorithms.md sections 1-3)
    rate = (index >= 0).double().mean()
    if method in ("speculative", "rrs"):
        miss, cur = 1.0, p[0]
        for _ in range(k):
            b = torch.minimum(cur, q[0]).sum()
            miss *= 1 - b
            cur = (cur - q[0]).clamp_min(0)
            cur = cur / cur.sum()
        assert abs(rate - (1 - miss)) < 4 * (0.25 / n) ** 0.5
    elif method == "kseq":
        r = rho_star(p, q, k)
        alpha = r * torch.minimum(q, p / r[:, None]).sum(-1)
        assert abs(rate - alpha[0]) < 4 * (0.25 / n) ** 0.5


def test_rejects_bad_arguments(kv):
    p, q, g = pair(2, 10, seed=1)
    d = draw(q, 2, g)
    u, e = noise_for(2, 10, 2, g)
    with pytest.raises(ValueError, match="one draft"):
        kv.verify_speculative(p, q, d, u[:, 0], e)
    with pytest.raises(ValueError, match="u must"):
        kv.verify_rrs(p, q, d, u[:, :1], e)
    with pytest.raises(ValueError, match="noise"):
        kv.verify_rrs(p, q, d, u, e[:, :5])
    with pytest.raises(ValueError, match="rho"):
        kv.verify_kseq(p, q, d, u, e, torch.ones(3))
    with pytest.raises(ValueError, match="same"):
        kv.verify_rrs(p, q[:, :5], d, u, e)
