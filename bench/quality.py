"""Entropy-switch quality benchmark: stdlib line completion (see fastdecode/benchmarks/quality.py).

    python bench/quality.py --quick          # smoke run, results under bench/results/tmp
    python bench/quality.py                  # 500 prompts, full threshold sweep -> bench/results/quality.*
"""
import argparse
import sys

from fastdecode.benchmarks import quality


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    quality.add_arguments(parser)
    return quality.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
