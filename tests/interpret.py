"""The Triton kernels under the interpreter: conftest sets TRITON_INTERPRET=1 on the CPU before triton is
imported; :func:`kernel_module` checks that a kernel really is the interpreter's."""
from __future__ import annotations


def kernel_module(name: str, device: str = "cpu"):
    """``fastdecode.kernels.<name>``; on the CPU its Triton kernel (built on first use) is the interpreter's."""
    import importlib

    from triton.runtime.interpreter import InterpretedFunction

    m = importlib.import_module(f"fastdecode.kernels.{name}")
    if device == "cpu":
        assert isinstance(m._kernel(), InterpretedFunction), "TRITON_INTERPRET=1 must be set before a kernel's first use"
    return m
