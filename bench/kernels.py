"""Kernel micro-benchmark: `PYTHONPATH=. python3 bench/kernels.py [--quick]` on a CUDA GPU (prints a
message and measures nothing elsewhere). Writes bench/results/kernels.json and a markdown table."""
import argparse
import sys

from fastdecode.benchmarks import kernels

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=kernels.__doc__.splitlines()[0])
    kernels.add_arguments(parser)
    sys.exit(kernels.run(parser.parse_args()))
