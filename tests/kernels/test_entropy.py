"""Triton ``entropy`` kernel vs float64 and the PyTorch reference (CPU, TRITON_INTERPRET=1)."""
import math
import os

DEVICE = os.environ.get("FASTDECODE_TEST_DEVICE", "cpu")  # bench/kernels_gpu_check.py sets "cuda"
os.environ.setdefault("TRITON_INTERPRET", "1" if DEVICE == "cpu" else "0")  # before triton is imported

import pytest

from interpret import kernel_module
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.filterwarnings("error")  # a NaN from a masked lane would warn in the interpreter

TOLS = {torch.float32: (2e-5, 2e-5), torch.float16: (2e-5, 2e-5), torch.bfloat16: (2e-5, 2e-5)}  # (atol, rtol)


@pytest.fixture(scope="module")
def mod():
    return kernel_module("entropy", DEVICE)


def kernel(mod, logits, *args, **kwargs):
    """The Triton host function on DEVICE (the interpreter on the CPU), result back on the CPU."""
    return mod.entropy(logits.to(DEVICE), *args, **kwargs).cpu()


def exact_bits(logits):
    # [rows, V] -> [rows] float64, from the same (upcast) logits
    logp = torch.log_softmax(logits.double(), -1)
    return -(logp.exp() * logp).nan_to_num(0.0).sum(-1) / math.log(2.0)


def logits_for(rows, V, dtype, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, V, generator=g) * scale).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("V,rows", [(1, 2), (100, 4), (8192, 2), (8193, 2), (32000, 1), (151936, 1)])
def test_matches_float64(mod, V, rows, dtype):
    x = logits_for(rows, V, dtype, seed=V)
    atol, rtol = TOLS[dtype]
    want = exact_bits(x)
    for split in (1, None):  # one program per row, and the vocabulary split over several programs
        got = kernel(mod, x, split=split)
        assert got.dtype == torch.float32 and got.shape == (rows,)
        torch.testing.assert_close(got.double(), want, atol=atol, rtol=rtol)
    torch.testing.assert_close(mod.entropy_reference(x).double(), want, atol=1e-4, rtol=1e-4)


def test_units_and_small_blocks(mod):
    x = logits_for(3, 1000, torch.float32, seed=1)
    bits = kernel(mod, x, "bits", split=5, block=64)
    nats = kernel(mod, x, "nats", split=1, block=16)
    torch.testing.assert_close(bits.double(), exact_bits(x), atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(nats.double(), exact_bits(x) * math.log(2.0), atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(mod.entropy_reference(x, "nats"), nats, atol=1e-5, rtol=1e-5)


def test_edge_rows(mod):
    x = torch.full((4, 300), float("-inf"))
    x[1, 7] = 2.0                       # one finite logit: entropy 0
    x[2, :] = 0.0                       # uniform: log2(300)
    x[3, 100:] = logits_for(1, 200, torch.float32, seed=2)  # padded vocabulary
    for split in (1, 3):
        got = kernel(mod, x, split=split, block=64)
        assert torch.isfinite(got).all()
        assert got[0] == 0 and got[1] == 0  # all -inf: 0 by convention, as the reference
        torch.testing.assert_close(got[2].double(), torch.tensor(math.log2(300), dtype=torch.float64))
        torch.testing.assert_close(got[3].double(), exact_bits(x[3:4])[0], atol=2e-5, rtol=2e-5)
    peaked = torch.tensor([[200.0, 0.0, 0.0, 0.0], [1e4, 1e4 - 30.0, 0.0, -1e4]])  # tiny entropies
    torch.testing.assert_close(kernel(mod, peaked).double(), exact_bits(peaked), atol=1e-9, rtol=1e-3)
    assert kernel(mod, torch.empty(0, 5)).shape == (0,)


def test_checker_catches_a_wrong_entropy(mod):
    """The float64 comparison fails for entropy in the wrong base (nats compared with bits)."""
    x = logits_for(2, 100, torch.float32, seed=3)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(kernel(mod, x, "nats").double(), exact_bits(x), atol=2e-5, rtol=2e-5)


def test_rejects_bad_arguments(mod):
    with pytest.raises(ValueError, match="unit"):
        kernel(mod, torch.randn(2, 5), "bytes")
    with pytest.raises(ValueError, match="logits"):
        kernel(mod, torch.randn(5))
    with pytest.raises(ValueError, match="split"):
        kernel(mod, torch.randn(2, 5), split=1000)
