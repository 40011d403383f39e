"""The project's benchmarks: scripts run from the repository root (``python bench/e2e.py --quick``), or
through ``fastdecode bench | bench-batch | acceptance | quality | long-context | kernels | optimal-cost``
in a source checkout. Not part of the installed package; what several scripts share is in
``bench/common.py``, their results in ``bench/results/``.
"""
