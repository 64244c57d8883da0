"""The benchmark keeps working: a few-second run of modelserve alone, through the real harness."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.benchmarks import quick_run


@pytest.mark.slow
def test_benchmark_quick_run_measures_modelserve(tmp_path: Path) -> None:
    _, data = quick_run("run.py", tmp_path / "quick.json")
    assert data["settings"]["duration_s"] <= 1.0 and data["settings"]["rounds"] == 1, "a smoke run stays short"
    summary = data["summary"]
    assert set(summary) == {"modelserve"}
    for workload in ("W1 c=1", "W1 c=32", "W2 c=8", "W3 c=32"):
        assert summary["modelserve"][workload]["throughput"] > 0
        assert summary["modelserve"][workload]["errors"] == 0
    assert summary["modelserve"]["ready_s"] > 0 and summary["modelserve"]["pss_mb"] > 50
    answers = data["answers"]["modelserve"]
    assert all(isinstance(answers[m], int) and answers[m] >= 0 for m in ("convnet", "resnet18")), answers
    assert answers["iris"] in ("setosa", "versicolor", "virginica"), "the iris row gets a class label"
