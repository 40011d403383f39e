"""compile="cudagraphs" on the CPU: the static runner's CUDA-only pieces replaced by a stand-in, everything else
(buckets, buffer copies, graph keys, replays into a fixed output) as on CUDA."""
import dataclasses

import torch

from fastdecode import api
from fastdecode.decoding import static_cache


class FakeGraph:
    """Stands in for a recorded CUDA graph on the CPU: a replay recomputes the function on the recorded input
    buffers into the recorded output, in place (so a caller that kept the output without copying it would see
    a later replay's values, as with a real graph). The output: a tensor, or a dataclass of tensors (whose
    other fields stay as recorded)."""

    def __init__(self, fn, bufs, out):
        self.fn, self.bufs, self.out = fn, bufs, out

    def replay(self):
        new = self.fn(*self.bufs)
        if isinstance(new, torch.Tensor):
            self.out.copy_(new)
            return
        for f in dataclasses.fields(new):
            if isinstance(getattr(new, f.name), torch.Tensor):
                getattr(self.out, f.name).copy_(getattr(new, f.name))


def install(monkeypatch) -> list:
    """Patch the runner (through ``monkeypatch``) so that compile="cudagraphs" records stand-in graphs, and
    compile=True ("inductor") records stand-in graphs of its compiled forwards, as both do on CUDA. Returns
    the list that collects (runner id, graph key) of each recording."""
    records = []
    init = static_cache.StaticRunner.__init__

    def fake_init(self, model, capacity, mode):
        init(self, model, capacity, "eager" if mode == "cudagraphs" else mode)
        self.mode, self.records = mode, True

    def fake_record(self, key, fn, inputs):
        bufs = tuple(x.clone() for x in inputs)
        out = fn(*bufs)
        self.graphs[key] = (FakeGraph(fn, bufs, out), bufs, out)
        records.append((id(self), key))
        return out

    monkeypatch.setattr(static_cache.StaticRunner, "__init__", fake_init)
    monkeypatch.setattr(static_cache.StaticRunner, "_record", fake_record)
    static_mode = api._static_mode
    monkeypatch.setattr(api, "_static_mode", lambda cache, compile, *a: "cudagraphs" if compile == "cudagraphs"
                        else static_mode(cache, compile, *a))
    return records
