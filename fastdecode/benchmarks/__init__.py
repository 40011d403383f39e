"""Benchmarks reachable from the command line (``fastdecode bench``, ``fastdecode acceptance``, ...).
The scripts in ``bench/`` call into these modules and keep their results (JSON, PNG) in bench/results/.

A smoke run (``--quick``) never replaces those published results: without ``--out`` it writes under
``bench/results/tmp/``, which git ignores.
"""
from __future__ import annotations

from pathlib import Path

RESULTS_DIR = Path("bench/results")
QUICK_DIR = RESULTS_DIR / "tmp"


def output_path(out, default: Path, quick: bool) -> Path:
    """Where a benchmark writes: ``out`` when given, else ``default``, or for a quick run the same name
    under ``bench/results/tmp/``."""
    if out is not None:
        return Path(out)
    return QUICK_DIR / Path(default).name if quick else Path(default)
