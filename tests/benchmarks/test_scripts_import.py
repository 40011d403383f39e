"""Every benchmark script imports cleanly (the GPU-only ones are not run on the CPU, so a stale import
would otherwise be found only on a GPU machine) and answers --help."""
import importlib
import os
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem not in ("__init__", "common"))


@pytest.fixture(autouse=True)
def _environment_kept():
    """Some GPU scripts set environment variables when imported (TRITON_INTERPRET=0, FASTDECODE_TEST_DEVICE):
    restore the environment so that later tests still run the kernels under the interpreter."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_imports(name):
    module = importlib.import_module(f"bench.{name}")
    if 'if __name__ == "__main__"' in (ROOT / "bench" / f"{name}.py").read_text():   # a script, not a helper module
        assert callable(getattr(module, "main", None)), f"bench/{name}.py has no main()"


@pytest.mark.parametrize("name", ["gpu_checks", "bandwidth_floor", "static_tuning", "step_time"])
def test_gpu_only_scripts_answer_help(name, monkeypatch, capsys):
    """Run as a script (``__main__``, argv ``--help``) in this process: a subprocess would spend 2 s importing
    torch again for each."""
    monkeypatch.setattr(sys, "argv", [str(ROOT / "bench" / f"{name}.py"), "--help"])
    monkeypatch.setattr(sys, "path", [str(ROOT / "bench")] + sys.path)   # as python puts a script's folder first
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "bench" / f"{name}.py"), run_name="__main__")
    assert done.value.code in (0, None) and "usage" in capsys.readouterr().out, name
