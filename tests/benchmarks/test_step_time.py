"""bench/step_time.py (where a static decode step's time goes; its real run needs a GPU) runs on the CPU at toy
size: a row per mode with the serial, queued and host times, and the JSON it writes."""
import json

from bench import step_time


def test_smoke_run(tmp_path, capsys):
    out = tmp_path / "st.json"
    assert step_time.main(["--smoke", "--models", "1b", "--steps", "4", "--repeats", "1", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["eager", "inductor"]
    for r in rows:
        assert "error" not in r and r["serial_ms"] > 0 and r["queued_ms"] > 0 and 0 < r["host_ms"] <= r["queued_ms"] * 1.5
    assert "| 1b | inductor |" in capsys.readouterr().out
