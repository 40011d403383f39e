"""verification/optimal_steps.py: the optimal verifier's building blocks against plain references (the
stable sort, the binary-search merge, exact rational powers)."""
import torch


def test_argsort_keys_is_the_stable_sort():
    """The CPU sort of the int64 keys (1-D radix sorts per row, rows of 12288..32767 keys padded) gives
    exactly the stable 2-D argsort, with many ties, for one and several rows."""
    from fastdecode.verification.optimal_steps import _argsort_keys
    g = torch.Generator().manual_seed(0)
    for L in (100, 12288, 20000, 32768, 40000):
        for N in (1, 3):
            for hi in (7, 1 << 40):                                       # heavy ties / few ties
                key = torch.randint(-hi, hi, (N, L), generator=g)
                key[:, ::5] = torch.iinfo(torch.int64).max - 1           # large keys, just below the padding
                assert torch.equal(_argsort_keys(key), torch.argsort(key, dim=-1, stable=True)), (L, N, hi)


def test_merge_sorted_cpu_equals_binary_search():
    from fastdecode.verification.optimal_steps import _merge_sorted, _merge_sorted_search
    g = torch.Generator().manual_seed(1)
    for La, Lc in ((1, 1), (5, 9), (300, 200)):
        a = torch.randint(0, 40, (3, La), generator=g).double().sort(-1).values / 8   # ties within and across
        c = torch.randint(0, 40, (3, Lc), generator=g).double().sort(-1).values / 8
        for x, y in zip(_merge_sorted(a, c), _merge_sorted_search(a, c)):
            assert torch.equal(x, y)


def test_pow_quotient_is_accurate():
    """dW = q (R_j^k - R_{j+1}^k) / (R_j - R_{j+1}) summed without cancellation: relative error of the
    quotient within a few ulps of exact rational arithmetic, for every k up to 16 and ratios near 1."""
    from fractions import Fraction
    from fastdecode.verification.optimal_steps import _pow_quotient, _powers
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 60, generator=g, dtype=torch.float64).sort(descending=True).values
    x[0, 20:30] = x[0, 20] * (1 - torch.arange(10, dtype=torch.float64) * 1e-12)   # a - b tiny
    x[0, -3:] = torch.tensor([1e-300, 1e-310, 0.0], dtype=torch.float64)
    for k in range(1, 17):
        got = _pow_quotient(_powers(x, k), k)[0].tolist()
        for j in range(59):
            a, b = Fraction(float(x[0, j])), Fraction(float(x[0, j + 1]))
            exact = sum(a ** i * b ** (k - 1 - i) for i in range(k))
            if exact == 0:
                assert got[j] == 0.0
            elif float(exact) > 1e-290:                                   # away from subnormal underflow
                assert abs(Fraction(got[j]) - exact) <= 8 * k * 2.0 ** -52 * exact, (k, j)
