"""bench/kernels.py is ready for a GPU: ``--smoke`` runs every case through the Triton interpreter and
compares each kernel's output with its reference (a broken reference is reported as a mismatch)."""
import argparse
import json

import pytest

pytest.importorskip("triton")


def _run(tmp_path, capsys):
    from bench import kernels

    parser = argparse.ArgumentParser()
    kernels.add_arguments(parser)
    out = tmp_path / "kernels.json"
    rc = kernels.run(parser.parse_args(["--smoke", "--vocab", "100", "--rows", "2", "--out", str(out)]))
    return rc, json.loads(out.read_text()), capsys.readouterr().out


def test_smoke_runs_every_case(tmp_path, capsys):
    from bench.kernels import cases

    rc, result, text = _run(tmp_path, capsys)
    assert rc == 0, text
    names = {(r["kernel"], r["variant"]) for r in result["rows"]}
    assert names == {(k, v) for k, v, _, _ in cases(quick=False)}
    assert {"probs", "entropy", "verify"} <= {k for k, _ in names}
    for r in result["rows"]:
        assert r["note"] == "" and r["triton_us"] and r["eager_us"] and r["bytes"] > 0, r
    assert "| verify | rrs k=4 | 100 | 2 |" in text


def test_smoke_reports_a_kernel_that_disagrees_with_its_reference(tmp_path, capsys, monkeypatch):
    import fastdecode.kernels as K

    real = K.entropy_reference
    monkeypatch.setattr(K, "entropy_reference", lambda x, unit="bits": real(x, unit) * 1.01)
    rc, result, _ = _run(tmp_path, capsys)
    assert rc == 1
    bad = [r for r in result["rows"] if r["note"].startswith("MISMATCH")]
    assert bad and all(r["kernel"] == "entropy" for r in bad)


@pytest.mark.slow
def test_command_line_smoke_runs_in_the_interpreter():
    """``fastdecode kernels --smoke`` on the CPU: the package imports triton before the script could ask for
    its interpreter (every case failed: a @triton.jit library function called outside a kernel); the
    script then reruns itself in a process that imports triton for the interpreter."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "fastdecode.cli", "kernels", "--smoke", "--vocab", "100", "--rows",
                           "1", "--out", os.devnull], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert " 0 failed" in done.stdout
