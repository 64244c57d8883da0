"""modelserve-archive as a user types it: every flag, every mistake, atomic writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from modelserve.archive.reader import extract_archive
from tests.support.paths import script


def archive(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [script("modelserve-archive"), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    (tmp_path / "net.py").write_text("class Net:\n    pass\n")
    (tmp_path / "net.pth").write_bytes(os.urandom(1000))
    (tmp_path / "handler.py").write_text("def handle(data, context):\n    return data\n")
    (tmp_path / "index_to_name.json").write_text('{"0": "zero"}')
    (tmp_path / "assets" / "nested").mkdir(parents=True)
    (tmp_path / "assets" / "vocab.txt").write_text("a\nb\n")
    (tmp_path / "assets" / "nested" / "deep.txt").write_text("deep")
    (tmp_path / "assets" / "__pycache__").mkdir()
    (tmp_path / "assets" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (tmp_path / "requirements.txt").write_text("numpy\n")
    (tmp_path / "model-config.yaml").write_text("batchSize: 4\n")
    (tmp_path / "out").mkdir()
    return tmp_path


FULL = [
    "--model-name", "net", "-v", "2.1", "--model-file", "net.py", "--serialized-file", "net.pth",
    "--handler", "handler.py", "--extra-files", "index_to_name.json,assets", "-r", "requirements.txt",
    "-c", "model-config.yaml", "--export-path", "out",
]  # fmt: skip
EXPECTED = {
    "net.py", "net.pth", "handler.py", "index_to_name.json", "vocab.txt", "nested/deep.txt",
    "requirements.txt", "model-config.yaml", "MAR-INF/MANIFEST.json",
}  # fmt: skip


def test_default_format_is_deflated_mar_with_every_file(inputs: Path) -> None:
    result = archive(*FULL, cwd=inputs)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", "no progress output when stderr is not a terminal"
    path = inputs / "out" / "net.mar"
    with zipfile.ZipFile(path) as mar:
        assert set(mar.namelist()) == EXPECTED
        assert mar.getinfo("net.pth").compress_type == zipfile.ZIP_DEFLATED
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    assert manifest["model"] == {
        "modelName": "net", "serializedFile": "net.pth", "handler": "handler.py", "modelFile": "net.py",
        "modelVersion": "2.1", "requirementsFile": "requirements.txt", "configFile": "model-config.yaml",
    }  # fmt: skip
    assert manifest["runtime"] == "python"
    assert extract_archive(path, inputs).manifest.model_version == "2.1"


def test_zip_store_format_stores_uncompressed(inputs: Path) -> None:
    assert archive(*FULL, "--archive-format", "zip-store", cwd=inputs).returncode == 0
    with zipfile.ZipFile(inputs / "out" / "net.mar") as mar:
        assert {i.compress_type for i in mar.infolist()} == {zipfile.ZIP_STORED}


def test_tgz_format_nests_under_model_name_like_torch_model_archiver(inputs: Path) -> None:
    assert archive(*FULL, "--archive-format", "tgz", cwd=inputs).returncode == 0
    with tarfile.open(inputs / "out" / "net.tar.gz") as tgz:
        names = {m.name for m in tgz.getmembers() if m.isfile()}
    assert names == {f"net/{n}" for n in EXPECTED}
    assert extract_archive(inputs / "out" / "net.tar.gz", inputs).manifest.model_name == "net"


def test_no_archive_format_writes_a_directory(inputs: Path) -> None:
    assert archive(*FULL, "--archive-format", "no-archive", cwd=inputs).returncode == 0
    root = inputs / "out" / "net"
    found = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert found == EXPECTED
    assert extract_archive(root, inputs).manifest.handler == "handler.py"


def test_defaults_version_one_and_current_directory(inputs: Path) -> None:
    result = archive("--model-name", "tiny", "--handler", "handler.py", cwd=inputs)
    assert result.returncode == 0, result.stderr
    manifest = json.loads(zipfile.ZipFile(inputs / "tiny.mar").read("MAR-INF/MANIFEST.json"))
    assert manifest["model"]["modelVersion"] == "1.0"


def test_module_function_handler_is_kept_as_given(inputs: Path) -> None:
    assert archive("--model-name", "fn", "--handler", "handler.py:handle", cwd=inputs).returncode == 0
    with zipfile.ZipFile(inputs / "fn.mar") as mar:
        assert json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["handler"] == "handler.py:handle"
        assert "handler.py" in mar.namelist()


def test_builtin_handler_name_copies_the_handler_file(inputs: Path) -> None:
    assert archive("--model-name", "ic", "--handler", "image_classifier", cwd=inputs).returncode == 0
    with zipfile.ZipFile(inputs / "ic.mar") as mar:
        assert "image_classifier.py" in mar.namelist()
        assert b"class " in mar.read("image_classifier.py")
        assert json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["handler"] == "image_classifier.py"


def test_existing_archive_needs_force(inputs: Path) -> None:
    assert archive(*FULL, cwd=inputs).returncode == 0
    before = (inputs / "out" / "net.mar").read_bytes()
    again = archive(*FULL, "-v", "3.0", cwd=inputs)
    assert again.returncode != 0
    assert "already exists" in again.stderr and "--force" in again.stderr
    assert (inputs / "out" / "net.mar").read_bytes() == before
    forced = archive(*FULL, "-v", "3.0", "-f", cwd=inputs)
    assert forced.returncode == 0, forced.stderr
    assert extract_archive(inputs / "out" / "net.mar", inputs).manifest.model_version == "3.0"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model-name", "bad name!", "--handler", "handler.py"], "invalid model name"),
        (["--model-name", "m", "--handler", "handler.py", "--serialized-file", "missing.pth"], "not found"),
        (["--model-name", "m", "--handler", "handler.py", "--model-file", "assets"], "not a regular file"),
        (["--model-name", "m", "--handler", "handler.py", "--extra-files", "nope.json"], "not found"),
        (["--model-name", "m", "--handler", "no_such_builtin"], "neither a file nor a built-in"),
        (["--model-name", "m", "--handler", "handler.py", "--archive-format", "rar"], "invalid choice"),
        (["--model-name", "m", "--handler", "handler.py", "--export-path", "missing-dir"], "not a directory"),
        (["--handler", "handler.py"], "--model-name"),
    ],
)
def test_user_mistakes_give_one_line_and_nonzero_exit(inputs: Path, args: list[str], message: str) -> None:
    result = archive(*args, cwd=inputs)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr
    assert not list(inputs.glob("*.mar")) and not list(inputs.glob(".*partial"))


def test_unreadable_file_is_reported(inputs: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file; permission errors cannot be provoked")
    (inputs / "net.pth").chmod(0)
    result = archive("--model-name", "m", "--handler", "handler.py", "--serialized-file", "net.pth", cwd=inputs)
    assert result.returncode != 0 and "not readable" in result.stderr


def test_interrupt_leaves_no_partial_archive(inputs: Path) -> None:
    big = inputs / "big.bin"
    with open(big, "wb") as out:
        for _ in range(64):
            out.write(os.urandom(4 << 20))
    # a shell's background job ignores SIGINT, and an ignored signal stays ignored across exec: handle it here for
    # the moment of the spawn, so the child starts with the default disposition and Python's Ctrl-C handling
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    proc = subprocess.Popen(
        [script("modelserve-archive"), "--model-name", "big", "--handler", "handler.py",
         "--serialized-file", "big.bin"],
        cwd=inputs, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    signal.signal(signal.SIGINT, previous)
    deadline = time.monotonic() + 60

    def writing() -> bool:
        try:
            return any(p.stat().st_size > (4 << 20) for p in inputs.glob(".big.*"))
        except FileNotFoundError:
            return False

    while time.monotonic() < deadline and proc.poll() is None and not writing():
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)  # mid-write: the partial archive already holds megabytes
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not (inputs / "big.mar").exists()
    assert not list(inputs.glob(".big.*"))
