"""The benchmark keeps working: a few-second run of modelserve alone, through the real harness."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.paths import REPO


@pytest.mark.slow
def test_benchmark_quick_run_measures_modelserve() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "run.py"), "--quick"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads((REPO / "benchmarks" / "results" / "quick.json").read_text())
    summary = data["summary"]["modelserve"]
    for workload in ("W1 c=1", "W1 c=32", "W2 c=8"):
        assert summary[workload]["throughput"] > 0
        assert summary[workload]["errors"] == 0
    assert summary["ready_s"] > 0 and summary["pss_mb"] > 50
    assert all(isinstance(v, int) and v >= 0 for v in data["answers"]["modelserve"].values())
