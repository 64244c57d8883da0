"""Archives written by torch-model-archiver 0.12.0 read by our reader, and ours laid out like theirs."""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

from modelserve.archive.packer import PackRequest, pack_archive
from modelserve.archive.reader import extract_archive
from tests.support.paths import script

TMA = shutil.which("torch-model-archiver") or script("torch-model-archiver")


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    (tmp_path / "net.py").write_text("class Net:\n    pass\n")
    (tmp_path / "net.pth").write_bytes(b"\x80weights")
    (tmp_path / "my_handler.py").write_text("def handle(data, context):\n    return data\n")
    (tmp_path / "index_to_name.json").write_text('{"0": "zero"}')
    (tmp_path / "model-config.yaml").write_text("batchSize: 2\n")
    (tmp_path / "requirements.txt").write_text("numpy\n")
    (tmp_path / "theirs").mkdir()
    (tmp_path / "ours").mkdir()
    return tmp_path


def torch_model_archiver(inputs: Path, fmt: str) -> None:
    result = subprocess.run(
        [TMA, "--model-name", "net", "--version", "1.0", "--model-file", "net.py", "--serialized-file", "net.pth",
         "--handler", "my_handler.py", "--extra-files", "index_to_name.json", "-r", "requirements.txt",
         "-c", "model-config.yaml", "--export-path", "theirs", "--archive-format", fmt],
        cwd=inputs, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def ours(inputs: Path, fmt: str) -> Path:
    return pack_archive(
        PackRequest(
            model_name="net", handler=str(inputs / "my_handler.py"), version="1.0", model_file=inputs / "net.py",
            serialized_file=inputs / "net.pth", extra_files=[inputs / "index_to_name.json"],
            requirements_file=inputs / "requirements.txt", config_file=inputs / "model-config.yaml",
            archive_format=fmt, export_path=inputs / "ours",
        )
    )  # fmt: skip


@pytest.mark.parametrize(("fmt", "name"), [("default", "net.mar"), ("tgz", "net.tar.gz"), ("no-archive", "net")])
def test_torch_model_archiver_archives_read_with_the_same_manifest(inputs: Path, fmt: str, name: str) -> None:
    torch_model_archiver(inputs, fmt)
    extracted = extract_archive(inputs / "theirs" / name, inputs)
    manifest = extracted.manifest
    assert (manifest.model_name, manifest.model_version, manifest.handler) == ("net", "1.0", "my_handler.py")
    assert manifest.serialized_file == "net.pth" and manifest.model_file == "net.py"
    assert manifest.config_file == "model-config.yaml" and manifest.requirements_file == "requirements.txt"
    assert manifest.archiver_version == "0.12.0"
    assert (extracted.root / "index_to_name.json").read_text() == '{"0": "zero"}'


def test_same_inputs_give_the_same_file_list_and_manifest_keys(inputs: Path) -> None:
    torch_model_archiver(inputs, "default")
    with zipfile.ZipFile(inputs / "theirs" / "net.mar") as theirs, zipfile.ZipFile(ours(inputs, "default")) as mine:
        assert sorted(theirs.namelist()) == sorted(mine.namelist())
        their_manifest = json.loads(theirs.read("MAR-INF/MANIFEST.json"))
        my_manifest = json.loads(mine.read("MAR-INF/MANIFEST.json"))
    assert set(their_manifest) == set(my_manifest)
    assert set(their_manifest["model"]) == set(my_manifest["model"])
    for key in ("modelName", "modelVersion", "handler", "serializedFile", "modelFile", "configFile"):
        assert their_manifest["model"][key] == my_manifest["model"][key]


def test_tgz_layout_matches(inputs: Path) -> None:
    torch_model_archiver(inputs, "tgz")
    with tarfile.open(inputs / "theirs" / "net.tar.gz") as theirs, tarfile.open(ours(inputs, "tgz")) as mine:
        assert sorted(m.name for m in theirs if m.isfile()) == sorted(m.name for m in mine if m.isfile())
