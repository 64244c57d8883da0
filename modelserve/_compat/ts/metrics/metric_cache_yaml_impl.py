"""TorchServe's ``MetricsCacheYamlImpl``: a metrics cache whose metrics may be declared in a YAML file.

The file's ``model_metrics`` section lists metrics by type (``counter``, ``gauge``, ``histogram``), each with
``name``, ``unit`` and ``dimensions``. In a worker, ``context.metrics`` is already such a cache.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from modelserve.handler_metrics import HandlerMetrics, MetricKind
from ts.metrics.metric_cache_errors import (
    MetricsCacheIOError,
    MetricsCacheKeyError,
    MetricsCachePyYamlError,
    MetricsCacheTypeError,
    MetricsCacheValueError,
)


class MetricsCacheYamlImpl(HandlerMetrics):
    def __init__(self, config_file_path: str | os.PathLike[str] | None = None, model_name: str = "") -> None:
        super().__init__(model_name)
        self.config_file_path = config_file_path
        self._declared: dict[str, Any] = {}
        if config_file_path is not None:
            self._declared = self._read(config_file_path)

    @staticmethod
    def _read(path: str | os.PathLike[str]) -> dict[str, Any]:
        try:
            with open(path, encoding="utf-8") as file:
                loaded = yaml.safe_load(file)
        except yaml.YAMLError as exc:
            raise MetricsCachePyYamlError(f"Error parsing file {path}: {exc}") from None
        except OSError as exc:
            raise MetricsCacheIOError(f"Error reading file {path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise MetricsCacheTypeError(f"{path} must hold a mapping")
        return loaded

    def initialize_cache(self) -> None:
        """Declare every metric of the file's ``model_metrics`` section."""
        section = self._declared.get("model_metrics")
        if section is None:
            raise MetricsCacheKeyError("the metrics file has no 'model_metrics' section")
        if not isinstance(section, dict):
            raise MetricsCacheValueError("'model_metrics' must map metric types to lists of metrics")
        for type_name, metrics in section.items():
            try:
                kind = MetricKind(type_name)
            except ValueError:
                raise MetricsCacheKeyError(f"Invalid metric type: {type_name}") from None
            for metric in metrics or []:
                if not isinstance(metric, dict) or "name" not in metric:
                    raise MetricsCacheKeyError(f"a {type_name} metric needs a name: {metric!r}")
                self.add_metric_to_cache(
                    str(metric["name"]), str(metric.get("unit", "")), list(metric.get("dimensions") or []), kind
                )
