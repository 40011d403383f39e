"""Reusable CPU buffers for the optimal verifier's race build (:mod:`fastdecode.verification.optimal`).

A build at V = 151936 makes some 70 tensors of ~V float64 / int64 elements. Fresh, their pages are
faulted in again on every call (glibc hands large freed blocks back to the OS), which cost the CPU build
about a third of its time. A :class:`Workspace` keeps the buffers and hands out views of them: a buffer
is handed out again only once no tensor uses its storage any more (the storage's use count is back to
the workspace's own references), so a tensor from it may be kept as long as wanted, like a fresh one.

Not thread-safe: :func:`local` gives each thread its own. Kept buffers total at most :data:`BUDGET_BYTES`
per workspace (past it, tensors are allocated fresh); on other devices than the CPU (CUDA has its own
caching allocator), or where torch lacks the use count, every tensor is fresh.
"""
from __future__ import annotations

import math
import threading

import torch

BUDGET_BYTES = 64 << 20    # per workspace (per thread); a one-row build at V = 151936 keeps ~30 MiB
MIN_BYTES = 1 << 17        # smaller tensors are fresh: glibc serves them from its heap, mostly without
                           # faults, and the pool's bookkeeping (~3 us a tensor) would cost more
_use_count = getattr(torch._C, "_storage_Use_Count", None)


class _Buffer:
    __slots__ = ("nbytes", "data", "storage", "typed", "idle")

    def __init__(self, nbytes: int):
        self.nbytes = nbytes
        self.data = torch.empty(nbytes, dtype=torch.uint8)
        self.storage = self.data.untyped_storage()      # (kept: a reference of its own, counted in idle)
        self.typed: dict = {}                           # dtype -> the whole buffer viewed as that dtype
        self.idle = _use_count(self.storage._cdata)     # the use count while no tensor is handed out

    def unused(self) -> bool:
        return _use_count(self.storage._cdata) == self.idle

    def view(self, shape, dtype: torch.dtype) -> torch.Tensor:
        flat = self.typed.get(dtype)
        if flat is None:                                # (only while unused: idle takes the new view in)
            flat = self.typed[dtype] = self.data.view(dtype)
            self.idle = _use_count(self.storage._cdata)
        stride, s = [], 1
        for n in reversed(shape):
            stride.append(s)
            s *= n
        return flat.as_strided(shape, stride[::-1])


class Workspace:
    """A pool of byte buffers, best fit first. ``empty(shape, dtype, device)`` is an uninitialised
    contiguous tensor, as torch.empty, whose memory comes from a buffer that no live tensor uses
    (device: a torch.device)."""

    def __init__(self, keep: bool = True):
        self.keep = keep and _use_count is not None
        self._bufs: list[_Buffer] = []    # by size, ascending
        self._bytes = 0

    def empty(self, shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < MIN_BYTES or not self.keep or device.type != "cpu":
            return torch.empty(shape, dtype=dtype, device=device)
        buf = next((b for b in self._bufs if b.nbytes >= nbytes and b.unused()), None)
        if buf is None:
            buf = self._new(nbytes)
            if buf is None:
                return torch.empty(shape, dtype=dtype, device=device)
        return buf.view(shape, dtype)

    def _new(self, nbytes: int) -> _Buffer | None:
        """A new buffer of nbytes rounded up to one of 8 sizes per octave (rows whose support varies call
        to call then share buffers); over the budget, unused buffers are dropped first, smallest first."""
        step = 1 << max(nbytes.bit_length() - 4, 4)
        nbytes = -(-nbytes // step) * step
        for b in [b for b in self._bufs if b.unused()]:
            if self._bytes + nbytes <= BUDGET_BYTES:
                break
            self._bufs.remove(b)
            self._bytes -= b.nbytes
        if self._bytes + nbytes > BUDGET_BYTES:
            return None
        buf = _Buffer(nbytes)
        self._bufs.append(buf)
        self._bufs.sort(key=lambda b: b.nbytes)
        self._bytes += nbytes
        return buf

    def out(self, shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """An ``out=`` argument: a tensor of :meth:`empty`, or None (the op allocates) where empty would
        allocate a fresh one anyway (saves the explicit allocation's ~3 us)."""
        if self.keep and device.type == "cpu" and math.prod(shape) * dtype.itemsize >= MIN_BYTES:
            return self.empty(shape, dtype, device)
        return None

    def full(self, shape, value, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return self.empty(shape, dtype, device).fill_(value)

    def clear(self) -> None:
        """Drop the kept buffers (tensors handed out stay valid)."""
        self._bufs = []
        self._bytes = 0


FRESH = Workspace(keep=False)   # allocates every time
_LOCAL = threading.local()


def local() -> Workspace:
    """This thread's workspace."""
    ws = getattr(_LOCAL, "ws", None)
    if ws is None:
        ws = _LOCAL.ws = Workspace()
    return ws
