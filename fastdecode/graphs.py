"""Recording a function as a CUDA graph: the one way the package does it (the static engine's forwards,
:mod:`fastdecode.decoding.static_cache`; the optimal verifier's recorded build, :mod:`fastdecode.verification.optimal`)."""
from __future__ import annotations

import torch


def record(fn, device) -> tuple[torch.cuda.CUDAGraph, object]:
    """(graph, fn()'s result): two warm-up calls of fn on a side stream (kernels built, lazily grown caches
    grown, so nothing is allocated outside the graph's memory pool while it records), then fn recorded as a
    CUDA graph with a pool of its own (graphs replayed in any order cannot overwrite each other's outputs).
    The result's tensors are the graph's: every replay rewrites them."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out
