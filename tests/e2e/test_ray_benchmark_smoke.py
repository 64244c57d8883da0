"""The Ray benchmark keeps working: its short run of modelserve's local and Ray backends through the real harness
(a two-node loopback Ray cluster; Ray Serve is left out, its venv is the full run's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.benchmarks import quick_run

pytest.importorskip("ray")

SERVERS = {"modelserve-local", "modelserve-ray"}


@pytest.mark.slow
@pytest.mark.ray
def test_ray_benchmark_quick_run_measures_both_backends(tmp_path: Path) -> None:
    stdout, data = quick_run("ray_bench.py", tmp_path / "ray-quick.json")
    assert "| start to READY (s) |" in stdout, "the tables print"
    settings = data["settings"]
    assert settings["quick"] and settings["rounds"] == 1 and settings["duration_s"] <= 2.0, "a smoke run stays short"
    assert set(settings["servers"]) == SERVERS, "the smoke run starts no Ray Serve"
    summary = data["summary"]
    assert set(summary) == SERVERS
    for server in SERVERS:
        entry = summary[server]
        assert entry["ready_s"] > 0 and entry["pss_mb"] > 0, server
        for workload in ("W1 c=32", "W2 c=8"):
            point = entry[workload]
            assert point["requests"] > 0 and point["throughput"] > 0, (server, workload)
            assert point["errors"] == 0, (server, workload, point)
            assert point["p99_ms"] >= point["p50_ms"] > 0, (server, workload)
    # the Ray backend's figures account for Ray's own processes separately
    assert summary["modelserve-ray"]["pss_mb_by_role"]["ray"] > 0
    assert summary["modelserve-local"]["pss_mb_by_role"]["ray"] == 0
