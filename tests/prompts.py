"""The prompts and corpora the tests take: windows of the Python standard library (never seen by the code pair
in training). One source with the benchmarks: the functions live in bench/common.py, outside the package."""
from bench.common import stdlib_corpus, stdlib_dir, stdlib_prompts, stdlib_sources

__all__ = ["stdlib_corpus", "stdlib_dir", "stdlib_prompts", "stdlib_sources"]
