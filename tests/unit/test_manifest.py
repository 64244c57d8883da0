"""The manifest schema: TorchServe's keys, validation naming the field."""

from __future__ import annotations

import json

import pytest

from modelserve.archive.errors import ManifestError
from modelserve.archive.manifest import Manifest


def test_manifest_round_trips_with_torchserve_keys() -> None:
    manifest = Manifest(
        model_name="mnist",
        handler="image_classifier.py",
        model_version="2.0",
        serialized_file="convnet.pth",
        model_file="convnet.py",
        config_file="model-config.yaml",
        requirements_file="requirements.txt",
    )
    data = json.loads(manifest.to_json())
    assert set(data) == {"createdOn", "runtime", "model", "archiverVersion"}
    assert data["model"] == {
        "modelName": "mnist",
        "serializedFile": "convnet.pth",
        "handler": "image_classifier.py",
        "modelFile": "convnet.py",
        "modelVersion": "2.0",
        "requirementsFile": "requirements.txt",
        "configFile": "model-config.yaml",
    }
    again = Manifest.from_dict(data)
    assert again.model_name == "mnist" and again.serialized_file == "convnet.pth"
    assert again.model_version == "2.0" and again.config_file == "model-config.yaml"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "model"),
        ({"model": "x"}, "model"),
        ({"model": {"handler": "h.py"}}, "model.modelName"),
        ({"model": {"modelName": "m"}}, "model.handler"),
        ({"model": {"modelName": "m", "handler": 3}}, "model.handler"),
        ({"model": {"modelName": "m", "handler": "h.py"}, "runtime": "LSP"}, "runtime"),
    ],
)
def test_manifest_missing_or_bad_field_is_named(data: object, field: str) -> None:
    with pytest.raises(ManifestError, match=field.replace(".", r"\.")):
        Manifest.from_dict(data)


def test_manifest_rejects_bad_model_name() -> None:
    with pytest.raises(ManifestError, match="invalid model name"):
        Manifest.from_dict({"model": {"modelName": "../evil", "handler": "h.py"}})


def test_manifest_rejects_non_json() -> None:
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.from_json(b"{not json")


def test_handler_file_distinguishes_files_and_builtin_names() -> None:
    assert Manifest(model_name="m", handler="h.py:handle").handler_file == "h.py"
    assert Manifest(model_name="m", handler="image_classifier").handler_file is None
