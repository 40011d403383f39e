"""compile="cudagraphs" on the CPU: the static runner's CUDA-only pieces replaced by a stand-in, everything else
(buckets, buffer copies, graph keys, replays into a fixed output) as on CUDA."""
import contextlib
import dataclasses

import torch
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._python_dispatch import TorchDispatchMode

from fastdecode import api
from fastdecode.decoding import static_cache


class FakeGraph:
    """Stands in for a recorded CUDA graph on the CPU: a replay recomputes the function on the recorded input
    buffers into the recorded output, in place (so a caller that kept the output without copying it would see
    a later replay's values, as with a real graph). The output: a tensor, a tuple of tensors, or a dataclass of
    tensors (whose other fields stay as recorded). Recording and replays refuse host reads (``NoHostReads``),
    unless ``host_reads``: a function whose CPU path reads where its CUDA path does not."""

    def __init__(self, fn, bufs, out, host_reads: bool = False, frozen: bool = False):
        self.fn, self.bufs, self.out, self.host_reads = fn, bufs, out, host_reads
        if frozen:   # replay what the recording did, Python values baked in, as a CUDA graph does
            self.fn = make_fx(lambda *xs: fn(*xs), tracing_mode="real")(*bufs)

    def replay(self):
        with contextlib.nullcontext() if self.host_reads else NoHostReads():
            new = self.fn(*self.bufs)
        if isinstance(new, torch.Tensor):
            self.out.copy_(new)
            return
        if isinstance(new, tuple):
            for o, x in zip(self.out, new):
                o.copy_(x)
            return
        for f in dataclasses.fields(new):
            if isinstance(getattr(new, f.name), torch.Tensor):
                getattr(self.out, f.name).copy_(getattr(new, f.name))


class NoHostReads(TorchDispatchMode):
    """A recorded function must not read the device from the host (a CUDA graph cannot capture it: the value
    would be frozen at recording): any op that brings a tensor's value to the host raises here."""

    READS = {"aten._local_scalar_dense", "aten.is_nonzero", "aten.item", "aten.equal"}
    # outputs whose shape depends on values: CUDA reads the size on the host (capture fails)
    SIZED_BY_VALUES = {"aten.nonzero", "aten.masked_select", "aten._unique2", "aten.unique_dim",
                       "aten.unique_consecutive", "aten.argwhere"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if name in self.READS:
            raise AssertionError(f"a recorded function read the device on the host ({func})")
        if (name in self.SIZED_BY_VALUES or (name == "aten.repeat_interleave" and not (kwargs or {}).get("output_size"))
                or (name == "aten.index" and any(isinstance(i, torch.Tensor) and i.dtype == torch.bool
                                                 for i in args[1]))):
            raise AssertionError(f"a recorded function made a tensor sized by its values ({func})")
        return func(*args, **(kwargs or {}))


def install(monkeypatch, frozen: bool = False) -> list:
    """Patch the runner (through ``monkeypatch``) so that compile="cudagraphs" records stand-in graphs, and
    compile=True ("inductor") records stand-in graphs of its compiled forwards, as both do on CUDA. Returns
    the list that collects (runner id, graph key) of each recording. ``frozen``: replays run a traced copy of
    the recording (``FakeGraph``'s ``frozen``; tracing costs ~6x the plain stand-in's time, so a few tests of
    the recorded step, the rings and entropy switching ask for it, the others re-run the function)."""
    records = []
    init = static_cache.StaticRunner.__init__

    def fake_init(self, model, capacity, mode, *args, **kwargs):
        init(self, model, capacity, "eager" if mode == "cudagraphs" else mode, *args, **kwargs)
        self.mode, self.records = mode, True

    def fake_record(self, key, fn, inputs):
        bufs = tuple(x.clone() for x in inputs)
        # (dynamo does not trace under a dispatch mode: the guard serves the eager-recorded functions, the
        # same code as the compiled ones apart from the forwards, which fullgraph compiles read-free anyway)
        unguarded = self.mode == "inductor"
        with contextlib.nullcontext() if unguarded else NoHostReads():
            out = fn(*bufs)
        self.graphs[key] = (FakeGraph(fn, bufs, out, host_reads=unguarded, frozen=frozen and not unguarded), bufs, out)
        records.append((id(self), key))
        return out

    monkeypatch.setattr(static_cache.StaticRunner, "__init__", fake_init)
    monkeypatch.setattr(static_cache.StaticRunner, "_record", fake_record)
    static_mode = api._static_mode
    monkeypatch.setattr(api, "_static_mode", lambda cache, compile, *a: "cudagraphs" if compile == "cudagraphs"
                        else static_mode(cache, compile, *a))
    return records
