"""The benchmark keeps working: a few-second run of modelserve alone, through the real harness."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.support.paths import REPO


@pytest.mark.slow
def test_benchmark_quick_run_measures_modelserve(tmp_path: Path) -> None:
    output = tmp_path / "quick.json"
    started = datetime.now(timezone.utc).replace(microsecond=0)
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick", "--output", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"results in {output}" in result.stdout
    data = json.loads(output.read_text())
    assert datetime.fromisoformat(data["date"]) >= started, "the results are this run's"
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
