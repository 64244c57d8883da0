"""The TorchServe-compatible manifest, ``MAR-INF/MANIFEST.json``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelserve import __version__
from modelserve.archive.errors import ManifestError
from modelserve.validation import NAME_PATTERN, InvalidValueError, check_name

MANIFEST_PATH = "MAR-INF/MANIFEST.json"
MODEL_NAME_PATTERN = re.compile(rf"^{NAME_PATTERN.pattern}\Z")
RUNTIMES = ("python", "python3")

# manifest key (inside "model") -> Manifest attribute, in the order torch-model-archiver writes them
_MODEL_KEYS = {
    "modelName": "model_name",
    "serializedFile": "serialized_file",
    "handler": "handler",
    "modelFile": "model_file",
    "modelVersion": "model_version",
    "requirementsFile": "requirements_file",
    "configFile": "config_file",
}


def check_model_name(name: str, field: str = "model name") -> None:
    """Raise ManifestError unless ``name`` is a valid model name (the server's rule, modelserve.validation)."""
    try:
        check_name(name, field)
    except InvalidValueError as exc:
        raise ManifestError(str(exc)) from None


@dataclass(frozen=True)
class Manifest:
    """What an archive says about its model. Field names follow Python; JSON keys follow TorchServe."""

    model_name: str
    handler: str
    model_version: str = "1.0"
    serialized_file: str | None = None
    model_file: str | None = None
    config_file: str | None = None
    requirements_file: str | None = None
    runtime: str = "python"
    created_on: str = ""
    archiver_version: str = ""

    @property
    def handler_file(self) -> str | None:
        """The archive file that holds the handler, or None for a bare (built-in) handler name."""
        module = self.handler.split(":", 1)[0]
        if module.endswith(".py"):
            return module
        return None

    def referenced_files(self) -> dict[str, str]:
        """Manifest field -> archive path, for every field that names a file inside the archive."""
        files = {
            "serializedFile": self.serialized_file,
            "modelFile": self.model_file,
            "configFile": self.config_file,
            "requirementsFile": self.requirements_file,
            "handler": self.handler_file,
        }
        return {key: value for key, value in files.items() if value}

    def to_dict(self) -> dict[str, Any]:
        model: dict[str, str] = {}
        for key, attr in _MODEL_KEYS.items():
            value = getattr(self, attr)
            if value:
                model[key] = value
        return {
            "createdOn": self.created_on or datetime.now().strftime("%d/%m/%Y %H:%M:%S"),
            "runtime": self.runtime,
            "model": model,
            "archiverVersion": self.archiver_version or __version__,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @classmethod
    def from_dict(cls, data: object) -> Manifest:
        """Validate a decoded manifest; every problem names the field."""
        if not isinstance(data, dict):
            raise ManifestError(f"{MANIFEST_PATH} must hold a JSON object")
        model = data.get("model")
        if not isinstance(model, dict):
            raise ManifestError(f"{MANIFEST_PATH}: missing field 'model' (an object)")
        values: dict[str, str] = {}
        for key, attr in _MODEL_KEYS.items():
            value = model.get(key)
            if value is None or value == "":
                continue
            if not isinstance(value, str):
                raise ManifestError(f"{MANIFEST_PATH}: field 'model.{key}' must be a string")
            values[attr] = value
        for required in ("modelName", "handler"):
            if _MODEL_KEYS[required] not in values:
                raise ManifestError(f"{MANIFEST_PATH}: missing field 'model.{required}'")
        check_model_name(values["model_name"], f"model name in {MANIFEST_PATH} (model.modelName)")
        if "model_version" in values:
            # the version becomes part of paths, URLs, metric labels and log lines
            check_model_name(values["model_version"], f"model version in {MANIFEST_PATH} (model.modelVersion)")
        runtime = data.get("runtime", "python")
        if runtime not in RUNTIMES:
            raise ManifestError(f"{MANIFEST_PATH}: unsupported runtime {runtime!r} (supported: {', '.join(RUNTIMES)})")
        for key in ("createdOn", "archiverVersion"):
            if key in data and not isinstance(data[key], str):
                raise ManifestError(f"{MANIFEST_PATH}: field '{key}' must be a string")
        return cls(
            runtime=str(runtime),
            created_on=str(data.get("createdOn", "")),
            archiver_version=str(data.get("archiverVersion", "")),
            **values,
        )

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ManifestError(f"{MANIFEST_PATH} is not valid JSON: {exc}") from None
        return cls.from_dict(data)
