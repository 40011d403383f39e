"""verification/workspace.py: a buffer is handed out again only once no tensor uses it; the budget holds."""
import torch

from fastdecode.verification import workspace
from fastdecode.verification.workspace import MIN_BYTES, Workspace

CPU = torch.device("cpu")
N = MIN_BYTES // 8 + 1000          # float64 elements: above MIN_BYTES, so pooled


def _ptr(t):
    return t.untyped_storage().data_ptr()


def test_reused_only_when_released():
    ws = Workspace()
    a = ws.empty((1, N), torch.float64, CPU)
    pa = _ptr(a)
    view = a[:, 5:]                                   # a view keeps the buffer in use
    del a
    b = ws.empty((1, N), torch.float64, CPU)
    assert _ptr(b) != pa
    del view
    c = ws.empty((N,), torch.int64, CPU)             # released: reused, under another dtype too
    assert _ptr(c) == pa and len(ws._bufs) == 2
    del b, c
    d = ws.empty((2, N // 2), torch.float64, CPU)
    assert len(ws._bufs) == 2 and d.is_contiguous() and d.shape == (2, N // 2)


def test_small_and_out_and_budget(monkeypatch):
    ws = Workspace()
    assert ws.out((4, 4), torch.float64, CPU) is None and not ws._bufs   # small: the op allocates
    monkeypatch.setattr(workspace, "BUDGET_BYTES", 5 * N * 8)
    kept = [ws.empty((N,), torch.float64, CPU) for _ in range(6)]        # the last ones: past the budget, fresh
    assert 0 < len(ws._bufs) < 6 and ws._bytes <= workspace.BUDGET_BYTES and all(t.shape == (N,) for t in kept)
    kept.clear()
    big = ws.empty((4 * N,), torch.float64, CPU)                          # unused buffers dropped for it
    assert ws._bytes <= workspace.BUDGET_BYTES and any(_ptr(big) == b.data.data_ptr() for b in ws._bufs)


def test_fresh_and_other_devices():
    assert not workspace.FRESH._bufs
    t = workspace.FRESH.empty((N,), torch.float64, CPU)
    assert t.shape == (N,) and not workspace.FRESH._bufs
