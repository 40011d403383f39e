"""Batched speed benchmark: `python bench/batch.py --batch 1,4,16` (same as `fastdecode bench-batch`)."""
import argparse
import sys

from fastdecode.benchmarks import batch

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=batch.__doc__.splitlines()[0])
    batch.add_arguments(parser)
    sys.exit(batch.run(parser.parse_args()))
