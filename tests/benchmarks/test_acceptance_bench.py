"""Smoke test of the acceptance benchmark on the code pair: a tiny corpus, and the invariants its
numbers must satisfy (k = 1 equalities, nobody beats the optimum of their scheme)."""
from __future__ import annotations

import argparse
import importlib.util
import json

import pytest


def test_acceptance_benchmark_smoke(tmp_path):
    pytest.importorskip("matplotlib")
    from bench import acceptance

    parser = argparse.ArgumentParser()
    acceptance.add_arguments(parser)
    out = tmp_path / "acceptance.json"
    # 2 batches of 256 positions; with seed 0 only the first holds a bound-subset position, so the
    # controls must still be averaged over every batch
    args = parser.parse_args(["--tokens", "512", "--ks", "1,2,4", "--temperatures", "1.0", "--subsample", "64",
                              "--bound-subsample", "2", "--device", "cpu", "--out", str(out)])
    assert acceptance.run(args) == 0
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    assert report["tokens"] == 512 and report["ks"] == [1, 2, 4]
    has_optimal = importlib.util.find_spec("fastdecode.verification.optimal") is not None
    for t, by_k in report["results"].items():
        one = by_k["1"]
        sd = one["speculative"]["mean"]
        for name in ("rrs", "spectr", "greedy_draft", "optimal_iid", "optimal_without_replacement",
                     "rrs_without_replacement") + (("optimal",) if has_optimal else ()):
            assert abs(one[name]["mean"] - sd) < 1e-9, (t, name)
        for k in ("2", "4"):
            row = by_k[k]
            iid, wo = row["optimal_iid"]["mean"], row["optimal_without_replacement"]
            assert max(row["rrs"]["mean"], row["spectr"]["mean"]) <= iid + 1e-9
            assert row["greedy_draft"]["mean"] >= sd                    # p(D) + sum min(p, q') >= sum min(p, q)
            assert row["rrs_without_replacement"]["stderr"] is not None and wo["stderr"] is not None
            if has_optimal:
                assert abs(row["optimal"]["mean"] - iid) < 1e-6
