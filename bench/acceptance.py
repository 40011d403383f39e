"""Acceptance rate of every verifier vs the optimal-transport bound: ``python bench/acceptance.py [--quick]``.
See fastdecode/benchmarks/acceptance.py; results go to bench/results/acceptance.json (+ .png)."""
import argparse
import sys

from fastdecode.benchmarks import acceptance

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    acceptance.add_arguments(parser)
    sys.exit(acceptance.run(parser.parse_args()))
