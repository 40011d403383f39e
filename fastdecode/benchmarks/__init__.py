"""Benchmarks reachable from the command line (``fastdecode bench``, ``fastdecode acceptance``, ...).
The scripts in ``bench/`` call into these modules and keep their results (JSON, PNG)."""
