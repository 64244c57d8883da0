"""Running a benchmark script's quick mode, for the smoke tests of the benchmarks."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tests.support.paths import REPO


def quick_run(script: str, output: Path) -> tuple[str, dict[str, Any]]:
    """Run ``benchmarks/<script> --quick`` writing its results to ``output``; its stdout and the results, once it
    succeeded and the results are this run's."""
    started = datetime.now(timezone.utc).replace(microsecond=0)
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--quick", "--output", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"results in {output}" in result.stdout
    data: dict[str, Any] = json.loads(output.read_text())
    assert datetime.fromisoformat(data["date"]) >= started, "the results are this run's"
    return result.stdout, data
