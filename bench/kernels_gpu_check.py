"""GPU correctness check of the Triton kernels (probs, entropy, verify) and of the verifiers' dispatch to them.

Runs the cases of tests/kernels/test_{probs,entropy,verify}.py with the kernels on the GPU (their
``*_reference`` and the float64 checks stay on the CPU, so verify is checked bit for bit across
devices). Prints one PASS / FAIL / SKIP line per case and exits with status 1 on any failure
(2 when there is no CUDA device). The CPU-only statistical tests of the references are left out.

Usage, from the repository root on a CUDA machine:  PYTHONPATH=. python3 bench/kernels_gpu_check.py
"""
import os
import sys
import time

os.environ["FASTDECODE_TEST_DEVICE"] = "cuda"
os.environ["TRITON_INTERPRET"] = "0"

TESTS = ["tests/kernels/test_probs.py", "tests/kernels/test_entropy.py", "tests/kernels/test_verify.py",
         "tests/kernels/test_fused_rules.py"]


class _Lines:
    """pytest plugin: one line per test."""

    def __init__(self):
        self.failed = []

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and not report.passed):
            status = "PASS" if report.passed else "SKIP" if report.skipped else "FAIL"
            if status == "FAIL":
                self.failed.append(report.nodeid)
            print(f"{status} {report.nodeid} ({report.duration:.2f}s)", flush=True)


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("kernels_gpu_check: no CUDA device here; nothing checked (the CPU tests run under pytest)")
        return 2
    import pytest

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.chdir(root)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    lines = _Lines()
    t0 = time.time()
    rc = pytest.main(["-q", "-p", "no:cacheprovider", "--no-header", "-rN", "-k", "not lossless", *TESTS],
                     plugins=[lines])
    print(f"{'FAIL' if rc else 'PASS'}: kernels on {torch.cuda.get_device_name()} "
          f"({len(lines.failed)} failed, {time.time() - t0:.0f}s)")
    for nodeid in lines.failed:
        print(f"  failed: {nodeid}")
    return 1 if rc else 0


if __name__ == "__main__":
    sys.exit(main())
