"""End-to-end speed benchmark: `python bench/e2e.py [--suite core|multi] [--quick]` (same as `fastdecode bench`)."""
import argparse
import sys

from fastdecode.benchmarks import e2e

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=e2e.__doc__.splitlines()[0])
    e2e.add_arguments(parser)
    sys.exit(e2e.run(parser.parse_args()))
