"""Per-step cost of the OT-optimal verifier: ``python bench/optimal_cost.py [--quick] [--device cpu|cuda]``.
See fastdecode/benchmarks/optimal_cost.py; results go to bench/results/optimal_cost.json (+ .png)."""
import argparse
import sys

from fastdecode.benchmarks import optimal_cost

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    optimal_cost.add_arguments(parser)
    sys.exit(optimal_cost.run(parser.parse_args()))
