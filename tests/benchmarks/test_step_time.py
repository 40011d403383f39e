"""bench/step_time.py (where a static decode step's time goes; its real run needs a GPU) runs on the CPU at toy
size: a row per mode with the serial, queued and host times, and the JSON it writes."""
import json

import pytest

from bench import step_time


def test_smoke_run(tmp_path, capsys):
    out = tmp_path / "st.json"
    assert step_time.main(["--smoke", "--models", "1b", "--steps", "4", "--repeats", "1", "--out", str(out),
                           "--modes", "eager,inductor-tuned"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["eager", "inductor-tuned"]
    for r in rows:
        assert "error" not in r and r["serial_ms"] > 0 and r["queued_ms"] > 0 and 0 < r["host_ms"] <= r["queued_ms"] * 1.5
    assert "| 1b | inductor-tuned |" in capsys.readouterr().out


def test_breakdown_groups_kernels_per_forward():
    """Kernel names are grouped by kind; counts and times are per forward; the matrix products' bandwidth is
    the weights read once per forward over their time."""
    assert step_time.kind_of("sm90_xmma_gemm_bf16bf16_bf16f32") == "matmul"
    assert step_time.kind_of("nvjet_tst_64x8_64x16_4x1_v_bz_TNT") == "matmul"
    assert step_time.kind_of("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0") == "fused (inductor)"
    assert step_time.kind_of("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits>") == "attention"
    assert step_time.kind_of("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor>") == "copy / fill"
    assert step_time.kind_of("void at::native::reduce_kernel<512, 1>") == "other"
    kernels = [("gemm_a", 300.0), ("gemm_b", 100.0), ("triton_poi_fused_0", 20.0), ("gemm_a", 300.0),
               ("gemm_b", 100.0), ("triton_poi_fused_0", 20.0)]
    b = step_time.breakdown(kernels, forwards=2, weight_bytes=4 * 10**8)
    assert b["groups"]["matmul"] == dict(kernels=2, ms=pytest.approx(0.4))
    assert b["groups"]["fused (inductor)"]["kernels"] == 1 and abs(b["ms"] - 0.42) < 1e-12
    assert abs(b["matmul_bytes_per_s"] - 1e12) < 1 and b["top"][0] == ("gemm_a", 0.3)
