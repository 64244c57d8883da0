"""TorchServe's per-model JSON in ``config.properties``: the ``models`` key and a ``model_snapshot`` to restore.

``models={"mnist": {"1.0": {"minWorkers": 1, "batchSize": 4, ...}}}`` gives settings per model name and version; they
apply to the versions loaded at start-up, below the archive's ``model-config.yaml``. A ``model_snapshot`` JSON (what
TorchServe writes into its snapshot files) names the archives to load, by ``marName``, with their settings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelserve.booleans import parse_bool
from modelserve.validation import check_name, check_version, parse_int

log = logging.getLogger("modelserve.config")


def _integer(minimum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        # TorchServe reads these with Gson's getAsInt, which also takes a number written as a string (ASCII digits
        # here, as everywhere: the shared rules of modelserve.validation)
        return parse_int(value, "", minimum, 2**31 - 1)

    return parse


def _runtime(value: Any) -> str:
    if value not in ("python", "python3"):
        raise ValueError(f"modelserve runs Python handlers only (python), got {json.dumps(value)}")
    return str(value)


def _file_name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected an archive file name, got {json.dumps(value)}")
    return value.strip()


# the keys TorchServe reads from an entry, with modelserve's checks; the first six are model-config.yaml keys too
_CONFIG_KEYS: dict[str, Callable[[Any], Any]] = {
    "minWorkers": _integer(0),
    "maxWorkers": _integer(0),
    "batchSize": _integer(1),
    "maxBatchDelay": _integer(0),
    "responseTimeout": _integer(1),
    "startupTimeout": _integer(1),
}
# TorchServe writes these into snapshots; they mean nothing here
_IGNORED_KEYS = frozenset({"parallelLevel"})


@dataclass(frozen=True)
class ModelSettings:
    """One version's entry: model-config.yaml style values, whether it is the default version, its archive."""

    values: dict[str, int] = field(default_factory=dict)
    default_version: bool = False
    mar_name: str | None = None


ModelTable = dict[str, dict[str, ModelSettings]]


def _entry(data: Any, where: str) -> ModelSettings:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object of settings, got {json.dumps(data)}")
    values: dict[str, int] = {}
    default_version = False
    mar_name: str | None = None
    for key, value in data.items():
        try:
            if key in _CONFIG_KEYS:
                values[key] = _CONFIG_KEYS[key](value)
            elif key == "defaultVersion":
                default_version = parse_bool(value)
            elif key == "marName":
                mar_name = _file_name(value)
            elif key == "runtimeType":
                _runtime(value)
            elif key not in _IGNORED_KEYS:
                log.warning("%s: unknown key %r ignored (known: %s)", where, key, ", ".join(_known_keys()))
        except ValueError as exc:
            raise ValueError(f"{where}: {key}: {exc}") from None
    if "minWorkers" in values and "maxWorkers" in values and values["maxWorkers"] < values["minWorkers"]:
        raise ValueError(f"{where}: maxWorkers ({values['maxWorkers']}) < minWorkers ({values['minWorkers']})")
    return ModelSettings(values=values, default_version=default_version, mar_name=mar_name)


def _known_keys() -> list[str]:
    return [*_CONFIG_KEYS, "defaultVersion", "marName", "runtimeType"]


def _table(data: Any, where: str) -> ModelTable:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object of model names, got {json.dumps(data)[:80]}")
    table: ModelTable = {}
    for name, versions in data.items():
        check_name(name, f"{where}: model name")
        if not isinstance(versions, dict):
            raise ValueError(f"{where}: model {name!r}: expected a JSON object of versions, got {json.dumps(versions)}")
        table[name] = {
            check_version(version, f"{where}: model {name!r} version"): _entry(
                entry, f"{where}: model {name!r} version {version!r}"
            )
            for version, entry in versions.items()
        }
    return table


def _load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def parse_models(text: str) -> ModelTable:
    """The ``models`` key: ``{name: {version: {setting: value}}}``; raise ValueError saying what is wrong."""
    if not text.strip():
        return {}
    return _table(_load_json(text), "models")


def parse_snapshot(text: str) -> ModelTable:
    """A TorchServe ``model_snapshot`` JSON (``{"name", "modelCount", "models": {...}}``); every entry needs marName."""
    data = _load_json(text)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object with a 'models' entry")
    table = _table(data.get("models") or {}, "models")
    for name, versions in table.items():
        for version, settings in versions.items():
            if settings.mar_name is None:
                raise ValueError(f"model {name!r} version {version!r} has no marName (the archive to load)")
    return table


def snapshot_entries(table: ModelTable) -> dict[str, Any]:
    """A restored TorchServe snapshot in the form of modelserve's own snapshot file (``url`` = the archive's name)."""
    models: dict[str, Any] = {}
    for name, versions in table.items():
        models[name] = {
            version: {"url": settings.mar_name, "defaultVersion": settings.default_version, **settings.values}
            for version, settings in versions.items()
        }
    return {"modelCount": sum(len(v) for v in models.values()), "models": models}
