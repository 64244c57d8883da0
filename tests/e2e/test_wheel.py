"""The built wheel carries handlers/: installed into a fresh virtual environment, it archives with a built-in name."""

from __future__ import annotations

import json
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.support.paths import REPO


@pytest.mark.slow
def test_wheel_installs_and_archives_with_a_builtin_handler(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-w", str(dist), "-q"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    wheel = next(dist.glob("modelserve-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "modelserve/builtin_handlers/image_classifier.py" in names
    # the ts compatibility package travels as data of modelserve, never as a top-level ts package
    compat = sorted(n for n in names if n.startswith("modelserve/_compat/ts/") and n.endswith(".py"))
    source_root = REPO / "modelserve"
    expected = sorted(
        f"modelserve/{f.relative_to(source_root).as_posix()}" for f in source_root.glob("_compat/**/*.py")
    )
    assert compat == expected
    assert not any(n.startswith("ts/") for n in names)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    installed = subprocess.run(
        [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    work = tmp_path / "work"
    work.mkdir()
    result = subprocess.run(
        [str(env_dir / "bin" / "modelserve-archive"), "--model-name", "digits", "--handler", "image_classifier"],
        cwd=work, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(work / "digits.mar") as archive:
        assert "image_classifier.py" in archive.namelist()
        assert json.loads(archive.read("MAR-INF/MANIFEST.json"))["model"]["handler"] == "image_classifier.py"
        source = archive.read("image_classifier.py")
    assert source == (REPO / "handlers" / "image_classifier.py").read_bytes()
    exposed = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c",
         "from modelserve.tscompat import expose_ts_package; assert expose_ts_package(); "
         "import ts.context, ts.version; print(ts.version.__version__)"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert exposed.returncode == 0 and exposed.stdout.strip() == "0.12.0", exposed.stderr
