"""Choosing the worker backend by name: the table's entries load, an unknown or unloadable name is a clear error,
and the CLI refuses to start with one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from modelserve.config import ServerConfig, load_server_config
from modelserve.errors import ConfigError
from modelserve.workers import backend as backend_module
from modelserve.workers.backend import BACKENDS, load_backend
from modelserve.workers.local import LocalBackend


def test_local_is_the_default_and_loads_from_the_table() -> None:
    config = ServerConfig()
    assert config.worker_backend == "local"
    chosen = load_backend(config.worker_backend, config)
    assert isinstance(chosen, LocalBackend) and chosen.name == "local"
    assert chosen.cores() >= 1


def test_the_setting_comes_from_the_file_the_environment_and_the_flag(tmp_path: Path) -> None:
    properties = tmp_path / "config.properties"
    properties.write_text("worker_backend=Local\n")
    assert load_server_config(properties, {}, {}).worker_backend == "local"
    assert load_server_config(None, {"MODELSERVE_WORKER_BACKEND": "other"}, {}).worker_backend == "other"
    assert load_server_config(properties, {}, {"worker_backend": "third"}).worker_backend == "third"


def test_an_unknown_backend_names_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"unknown worker_backend 'nope' \(choose one of: local, ray\)"):
        load_backend("nope", ServerConfig())


def test_a_backend_whose_module_cannot_import_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backend_module, "BACKENDS", {**BACKENDS, "missing": "modelserve.workers.no_such_module:X"})
    with pytest.raises(ConfigError, match="worker_backend 'missing' is not available"):
        load_backend("missing", ServerConfig())


def test_the_server_refuses_to_start_with_an_unknown_backend(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "modelserve.cli", "--start", "--foreground", "--ncs", "--worker-backend", "nope",
         "--model-store", str(tmp_path)],
        check=False, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode != 0
    assert "unknown worker_backend 'nope' (choose one of: local, ray)" in done.stderr
    assert "Traceback" not in done.stderr
