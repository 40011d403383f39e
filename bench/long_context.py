"""Lambda attention long-context benchmark: `python bench/long_context.py [--quick] [--device cuda]`
(same as `fastdecode long-context`): perplexity vs position, code passkey retrieval, decode speed and memory."""
import argparse
import sys

from fastdecode.benchmarks import long_context

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=long_context.__doc__.splitlines()[0])
    long_context.add_arguments(parser)
    sys.exit(long_context.run(parser.parse_args()))
