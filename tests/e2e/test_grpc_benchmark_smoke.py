"""The gRPC and streaming benchmark keeps working: its few-second run of modelserve alone, through the real harness."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.benchmarks import quick_run

W1_POINTS = {"modelserve gRPC", "modelserve HTTP"}
STREAM_POINTS = {
    "HTTP chunked c=1",
    "HTTP chunked c=8",
    "StreamPredictions c=1",
    "StreamPredictions c=8",
    "ModelStreamInfer c=1",
    "ModelStreamInfer c=8",
}


@pytest.mark.slow
def test_grpc_benchmark_quick_run_measures_modelserve(tmp_path: Path) -> None:
    stdout, data = quick_run("grpc_stream.py", tmp_path / "grpc-quick.json")
    assert "| modelserve gRPC |" in stdout and "| HTTP chunked c=1 |" in stdout, "the tables print"
    settings = data["settings"]
    assert settings["quick"] and settings["rounds"] == 1 and settings["duration_s"] <= 2.0, "a smoke run stays short"
    assert settings["mlserver_packages"] == [], "the smoke run installs no MLServer"

    # every answer was checked against ONNX Runtime run directly before the load, and under it
    assert set(data["answers"]) == W1_POINTS
    for checks in data["answers"].values():
        assert checks and all(c["max_abs_difference"] <= 1e-5 and 0 <= c["class"] <= 9 for c in checks), checks
    w1 = data["summary"]["w1"]
    assert set(w1) == W1_POINTS
    for name, point in w1.items():
        assert point["requests"] > 0 and point["throughput"] > 0, name
        assert point["errors"] == 0 and point["wrong_answers"] == 0, (name, point)
        assert point["p99_ms"] >= point["p50_ms"] > 0, (name, point)
        assert point["front_cpu_ms_per_request"] > 0 and point["worker_cpu_ms_per_request"] > 0, (name, point)
        assert point["client_cpu_ms_per_request"] > 0, (name, point)
    assert data["ratios"]["modelserve gRPC / modelserve HTTP"] > 0

    streams = data["summary"]["streams"]
    assert set(streams) == STREAM_POINTS
    for label, point in streams.items():
        assert point["streams"] > 0 and point["chunks"] == point["streams"] * settings["pieces_per_stream"], label
        assert point["errors"] == 0 and point["wrong_streams"] == 0, (label, point)
        # the pieces carry the handler's CLOCK_MONOTONIC stamps: sent before the handler yields, got after
        assert point["first_chunk_p50_ms"] > point["send_to_first_yield_p50_ms"] > 0, (label, point)
        assert point["piece_yield_to_client_p50_ms"] > 0, (label, point)
    for label in ("HTTP chunked c=1", "HTTP chunked c=8"):  # the parent's own first-piece histogram moved too
        point = streams[label]
        assert point["parent_first_piece_count"] > 0 and point["parent_first_piece_mean_ms"] > 0, point
        assert 0 <= point["parent_first_piece_within_1ms"] <= point["parent_first_piece_within_2.5ms"] <= 1, point
    targets = {t["target"]: t for t in data["targets"]}
    assert any("MLServer" in t and v["measured"] is None for t, v in targets.items()), "no MLServer figure here"
