"""Triton ``probs`` kernel (temperature, top-k, top-p without sorting) vs the exact semantics and the
PyTorch reference, on the CPU under TRITON_INTERPRET=1; plus a compile check for a real GPU target.

The exact semantics are computed here in float64 from the same float32 scaled logits the kernel uses:
top-k keeps x >= (k-th largest x), exactly; top-p keeps x iff the mass of strictly more probable kept
tokens is < top_p. The kernel accumulates masses in float32, so a token whose float64 "mass before"
lies within MASS_TOL of top_p may go either way; every other token must match.
"""
import os
import subprocess
import sys

DEVICE = os.environ.get("FASTDECODE_TEST_DEVICE", "cpu")  # bench/kernels_gpu_check.py sets "cuda"
os.environ.setdefault("TRITON_INTERPRET", "1" if DEVICE == "cpu" else "0")  # before triton is imported

import pytest

from interpret import kernel_module
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("error")  # a NaN from a masked lane would warn in the interpreter

MASS_TOL = 1e-4
# per input dtype: (atol, rtol) of the kernel's probabilities against float64 on the kernel's kept set
TOLS = {torch.float32: (1e-7, 2e-5), torch.float16: (1e-7, 2e-5), torch.bfloat16: (1e-7, 2e-5)}


@pytest.fixture(scope="module")
def mod():
    return kernel_module("probs", DEVICE)


def kernel(mod, logits, *args, **kwargs):
    """The Triton host function on DEVICE (the interpreter on the CPU), result back on the CPU."""
    return mod.probs(logits.to(DEVICE), *args, **kwargs).cpu()


def exact_kept(logits, temperature, top_k, top_p, mod):
    # logits: [rows, V] -> kept [rows, V] bool, ambiguous [rows, V] bool, p64 [rows, V] float64
    inv_t = mod._inverse_temperature(temperature)
    x = logits.float() * torch.tensor(inv_t, dtype=torch.float32)
    V = x.shape[-1]
    kept = torch.ones_like(x, dtype=torch.bool)
    if 0 < top_k < V:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        kept = x >= kth
    x64 = x.double().masked_fill(~kept, float("-inf"))
    p64 = torch.softmax(x64, -1)
    # e^(x - max) underflows to 0 in float32: kept or not, the token's probability is 0
    ambiguous = torch.exp(x.double() - x.double().max(-1, keepdim=True).values) < 1e-37
    if top_p < 1.0:
        xs, order = torch.sort(x64, -1, descending=True)
        ps = p64.gather(-1, order)
        cum = torch.cumsum(ps, -1)
        # mass strictly above = cumulative mass before the first element of the tie group
        first = torch.ones_like(xs, dtype=torch.bool)
        first[:, 1:] = xs[:, 1:] != xs[:, :-1]
        before = torch.where(first, cum - ps, torch.zeros_like(cum))
        before = torch.cummax(before, -1).values
        keep_sorted = before < top_p
        kept = kept & torch.zeros_like(kept).scatter(-1, order, keep_sorted)
        ambiguous |= torch.zeros_like(kept).scatter(-1, order, (before - top_p).abs() < MASS_TOL)
    return kept, ambiguous, p64


def check(mod, logits, temperature=1.0, top_k=0, top_p=1.0, **launch):
    out = kernel(mod, logits, temperature, top_k, top_p, **launch)
    ref = mod.probs_reference(logits, temperature, top_k, top_p)
    assert out.dtype == torch.float32 and out.shape == logits.shape
    assert torch.isfinite(out).all() and (out >= 0).all()
    torch.testing.assert_close(out.double().sum(-1), torch.ones(out.shape[0], dtype=torch.float64), atol=1e-5, rtol=0)
    if temperature == 0:
        assert torch.equal(out, ref)  # one-hot at the first argmax
        return out
    kept, ambiguous, p64 = exact_kept(logits, temperature, top_k, top_p, mod)
    got = out > 0
    bad = (got != kept) & ~ambiguous
    assert not bad.any(), f"{int(bad.sum())} tokens kept/dropped wrongly, first at {bad.nonzero()[:3].tolist()}"
    # probabilities: the exact float64 softmax renormalised over the kernel's own kept set
    want = torch.where(got, p64, torch.zeros_like(p64))
    want = want / want.sum(-1, keepdim=True)
    atol, rtol = TOLS[logits.dtype]
    torch.testing.assert_close(out.double(), want, atol=atol, rtol=rtol)
    if logits.dtype == torch.float32:  # and against the sort-based reference: same set up to rounding
        differ = (got != (ref > 0)).sum(-1)
        assert int(differ.max()) <= max(2, logits.shape[-1] // 10000), f"kept sets differ by {differ.tolist()}"
    return out


CONFIGS = [  # (temperature, top_k, top_p)
    (1.0, 0, 1.0), (0.7, 0, 1.0), (0.0, 0, 1.0), (1.0, 50, 1.0), (1.0, 1, 1.0),
    (1.0, 0, 0.9), (0.8, 40, 0.8), (1.3, 0, 0.3), (1.0, 7, 0.95),
]


def logits_for(rows, V, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, V, generator=g) * scale).to(dtype)


@pytest.mark.parametrize("V,rows", [(100, 4), (8193, 2), (32000, 1)])
@pytest.mark.parametrize("cfg", CONFIGS)
def test_matches_semantics(mod, V, rows, cfg):
    check(mod, logits_for(rows, V, torch.float32, seed=V), *cfg)


@pytest.mark.parametrize("cfg", [(1.0, 0, 1.0), (0.0, 0, 1.0), (0.8, 40, 0.8), (1.0, 0, 0.9)])
def test_large_vocabulary(mod, cfg):
    check(mod, logits_for(1, 151936, torch.float32, seed=1, scale=2.0), *cfg)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("V,cfg", [(8192, (1.0, 0, 0.9)), (8192, (0.7, 20, 1.0)), (151936, (1.0, 0, 0.9))])
def test_half_precision_inputs(mod, dtype, V, cfg):
    # few distinct values: many exact ties, including on the top-k and top-p boundaries
    check(mod, logits_for(1, V, dtype, seed=3), *cfg)


def test_small_blocks_span_many_iterations(mod):
    x = logits_for(2, 300, torch.float32, seed=5)
    for cfg in [(1.0, 0, 1.0), (0.0, 0, 1.0), (0.8, 40, 0.8)]:
        check(mod, x, *cfg, block=128, search_block=64)


def test_edge_rows(mod):
    one = torch.tensor([[0.3]])
    for cfg in CONFIGS:
        assert torch.equal(kernel(mod, one, *cfg), torch.ones(1, 1))
    flat = torch.zeros(2, 300)  # all tied: top-k keeps the whole tie group, top-p too
    assert torch.equal(kernel(mod, flat, 1.0, 5, 1.0) > 0, torch.ones(2, 300, dtype=torch.bool))
    assert torch.equal(kernel(mod, flat, 1.0, 0, 0.5) > 0, torch.ones(2, 300, dtype=torch.bool))
    masked = logits_for(2, 500, torch.float32, seed=9)
    masked[:, 100:] = float("-inf")  # a padded vocabulary
    for cfg in CONFIGS:
        out = check(mod, masked, *cfg)
        assert (out[:, 100:] == 0).all()
    ties = torch.tensor([[1.0, 5.0, 5.0, 2.0], [5.0, 5.0, 5.0, 5.0]])
    assert kernel(mod, ties, 0.0).argmax(-1).tolist() == [1, 0]
    assert kernel(mod, torch.empty(0, 10)).shape == (0, 10)


def test_rejects_bad_arguments(mod):
    x = torch.randn(2, 10)
    for kwargs in [dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)]:
        with pytest.raises(ValueError):
            mod.probs(x, **kwargs)
    with pytest.raises(ValueError, match="logits"):
        mod.probs(torch.randn(10))
    with pytest.raises(ValueError, match="block"):
        mod.probs(x, block=48)


def test_broken_threshold_is_caught(mod):
    """The checker must fail a kernel that keeps one token too many (here: top-k + 1)."""
    x = logits_for(2, 8193, torch.float32, seed=4)
    wrong = mod.probs_reference(x, 1.0, 51, 1.0)
    kept, ambiguous, _ = exact_kept(x, 1.0, 50, 1.0, mod)
    assert (((wrong > 0) != kept) & ~ambiguous).any()


GPU_COMPILE = r"""
import importlib, triton
from triton.backends.compiler import GPUTarget

def build(module, kernel, sig, const, **opts):
    fn = importlib.import_module(module)._kernel()
    src = triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=const)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=8, **opts))
    assert "cubin" in k.asm, kernel

i32, f32 = "i32", "fp32"
build("fastdecode.kernels.probs", "_probs_kernel",
      dict(x_ptr="*bf16", out_ptr="*fp32", V=i32, stride_x=i32, stride_o=i32, inv_t=f32, top_k=i32, top_p=f32,
           greedy=i32, use_top_k=i32, use_top_p=i32, BLOCK="constexpr", BLOCK_S="constexpr", NT="constexpr"),
      dict(BLOCK=4096, BLOCK_S=256, NT=16), enable_fp_fusion=True)
build("fastdecode.kernels.entropy", "_entropy_kernel",
      dict(x_ptr="*fp16", out_ptr="*fp32", part_ptr="*fp32", count_ptr="*i32", V=i32, stride_x=i32, chunk=i32,
           scale=f32, SPLIT="constexpr", BLOCK="constexpr", NCP="constexpr"),
      dict(SPLIT=True, BLOCK=4096, NCP=256), enable_fp_fusion=True)
build("fastdecode.kernels.verify", "_verify_kernel",
      dict(p_ptr="*fp32", q_ptr="*fp32", d_ptr="*i64", u_ptr="*fp64", e_ptr="*fp32", rho_ptr="*fp64", tok_ptr="*i64",
           idx_ptr="*i64", part_i_ptr="*i64", part_f_ptr="*fp32", count_ptr="*i32", V=i32, K=i32, chunk=i32, mode=i32,
           empty_fixed="i64", stride_p=i32, stride_q=i32, stride_d=i32, stride_u=i32, stride_e=i32,
           SPLIT="constexpr", BLOCK="constexpr", NCP="constexpr"),
      dict(SPLIT=True, BLOCK=2048, NCP=256), enable_fp_fusion=False)
"""


@pytest.mark.skipif(DEVICE != "cpu", reason="on a GPU the kernels are compiled and run by the other tests")
def test_kernels_compile_for_a_gpu():
    """The interpreter accepts code that the GPU compiler rejects: compile all three kernels of this
    package (probs, entropy, verify) for sm_90 in a clean process (no GPU needed)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", GPU_COMPILE], env=env, capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and "ptxas" in r.stderr and "not found" in r.stderr:
        pytest.skip("no ptxas in this triton installation")
    assert r.returncode == 0, r.stderr[-3000:]
