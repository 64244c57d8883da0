"""scripts/audit_dependencies.py, as CI runs it: passes on this environment, fails naming a known-vulnerable pin."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from tests.support.paths import REPO

SCRIPT = REPO / "scripts" / "audit_dependencies.py"


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


def test_installed_dependencies_pass_the_vendored_advisories() -> None:
    result = audit()
    assert result.returncode == 0, result.stderr
    assert "no installed direct dependency is in a known-vulnerable range" in result.stdout


def test_an_installed_version_in_an_affected_range_fails_the_audit(tmp_path: Path) -> None:
    installed = metadata.version("aiohttp")
    advisories = json.loads((REPO / "scripts" / "known_vulnerabilities.json").read_text())
    advisories["advisories"].append({"package": "aiohttp", "id": "TEST-0001", "affected": f"<={installed}",
                                     "summary": "a made-up advisory"})  # fmt: skip
    path = tmp_path / "advisories.json"
    path.write_text(json.dumps(advisories))
    result = audit("--advisories", str(path))
    assert result.returncode == 1
    assert f"VULNERABLE aiohttp {installed}: TEST-0001" in result.stderr


def test_every_direct_dependency_is_covered_by_the_advisory_list() -> None:
    result = audit()
    assert "is not covered by the advisory list" not in result.stderr, result.stderr
