"""``python -m fastdecode ...``: the same command line as the ``fastdecode`` script (:mod:`fastdecode.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
