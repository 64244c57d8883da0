"""install_py_dep_per_model: an archive's requirements file, installed with pip only when the server allows it."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import zipfile
from pathlib import Path

from tests.support.server import make_archive, running_server, wait_for


def make_wheel(directory: Path, value: int) -> Path:
    """A minimal pure-Python wheel of the package ``tinydep`` (built here: nothing is downloaded)."""
    files = {
        "tinydep/__init__.py": f"VALUE = {value}\n".encode(),
        "tinydep-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinydep\nVersion: 1.0\n",
        "tinydep-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("tinydep-1.0.dist-info/RECORD,,")
    files["tinydep-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / "tinydep-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel


def deps_archive(store: Path, name: str, requirement: str) -> None:
    source = store.parent / f"deps-src-{name}"
    source.mkdir()
    wheel = make_wheel(source, 42)
    requirements = source / "requirements.txt"
    requirements.write_text(requirement + "\n")
    make_archive(store, name, "deps_handler.py", config_yaml="minWorkers: 1\n",
                 extra={wheel.name: wheel.read_bytes()}, requirements_file=requirements)  # fmt: skip


def test_requirements_are_installed_for_the_model_alone_when_allowed(tmp_path: Path, store: Path) -> None:
    assert importlib.util.find_spec("tinydep") is None, "the package must not exist in the server's environment"
    deps_archive(store, "needsdeps", "./tinydep-1.0-py3-none-any.whl")
    with running_server(tmp_path, store, ["needsdeps.mar"], extra_args=["--ncs"],
                        config="install_py_dep_per_model=true\n") as server:  # fmt: skip
        response = server.predict("needsdeps", b"x")
        assert response.status == 200, response.text
        answer = response.json()
        assert answer["value"] == 42
        assert "python-deps" in answer["location"], "imported from the model's own dependency directory"
        assert "installing the requirements" in server.log_text()
    assert importlib.util.find_spec("tinydep") is None


def test_requirements_are_not_installed_by_default_and_the_log_says_how(tmp_path: Path, store: Path) -> None:
    deps_archive(store, "needsdeps", "./tinydep-1.0-py3-none-any.whl")
    with running_server(tmp_path, store, ["needsdeps.mar"], extra_args=["--ncs"]) as server:
        wait_for(lambda: "install_py_dep_per_model is false" in server.log_text(), 30, "the warning")
        wait_for(lambda: server.manage("GET", "/models/needsdeps").json()[0]["status"] == "FAILED", 60, "FAILED")
        described = server.manage("GET", "/models/needsdeps").json()[0]
        assert "tinydep" in described["error"], described
        assert server.predict("needsdeps", b"x").status == 503


def test_failed_installation_is_a_clear_error_at_startup_and_on_registration(tmp_path: Path, store: Path) -> None:
    deps_archive(store, "brokendeps", "./missing-9.9-py3-none-any.whl")
    with running_server(tmp_path, store, ["brokendeps.mar"], extra_args=["--ncs", "--enable-model-api"],
                        config="install_py_dep_per_model=true\n") as server:  # fmt: skip
        wait_for(lambda: "pip could not install requirements.txt" in server.log_text(), 120, "the startup error")
        assert server.manage("GET", "/models/brokendeps").status == 404
        response = server.manage("POST", "/models?url=brokendeps.mar&synchronous=true")
        assert response.status == 500, response.text
        message = response.json()["message"]
        assert "pip could not install requirements.txt" in message and "missing-9.9" in message
        assert server.manage("GET", "/models/brokendeps").status == 404, "a failed registration leaves nothing"
