"""``context.metrics``: the metrics a handler adds, in modelserve's own style and in TorchServe's.

Two call styles reach the same samples:

* modelserve's: ``add_counter(name, value, labels, description)``, ``set_gauge``, ``observe`` (histogram);
* TorchServe's metrics cache: ``add_metric``, ``add_counter(name, value, idx, dimensions)``, ``add_time``,
  ``add_size``, ``add_percent``, ``add_error``, ``add_metric_to_cache`` and ``get_metric`` returning a metric with
  ``add_or_update`` / ``update``. Dimensions (anything with ``name`` and ``value``) become Prometheus labels.

Samples travel to the parent in the reply frame; ``/metrics`` shows them as ``modelserve_handler_<name>`` with the
``model_name`` and ``model_version`` labels. This module imports nothing from the ``ts`` compatibility package.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

RESERVED_LABELS = ("model_name", "model_version")
# the model is already a label; TorchServe's request-level dimension says nothing Prometheus needs
TORCHSERVE_IMPLIED_DIMENSIONS = ("ModelName",)
TIME_UNITS = ("ms", "s")
SIZE_UNITS = ("MB", "kB", "GB", "B")
_INVALID = re.compile(r"[^A-Za-z0-9_]")


class MetricKind(str, enum.Enum):
    """A metric's type; the values are TorchServe's ``MetricTypes`` values."""

    COUNTER = "counter"
    GAUGE = "gauge"
    HISTOGRAM = "histogram"


class MetricsCacheError(Exception):
    """Base of the errors the TorchServe-style metrics API raises."""


class MetricsCacheKeyError(MetricsCacheError, KeyError):
    """``get_metric`` for a metric that was never added."""


class MetricsCacheValueError(MetricsCacheError, ValueError):
    """A unit or value the metric type does not accept."""


class MetricsCacheTypeError(MetricsCacheError, TypeError):
    """An argument of the wrong type."""


@dataclass
class MetricSample:
    """One handler metric update, carried back to the parent in the reply frame."""

    kind: str  # a MetricKind value
    name: str
    value: float
    labels: dict[str, str]
    description: str = ""


def _prometheus_name(name: str) -> str:
    """A TorchServe metric or dimension name as a valid Prometheus name (``Latency.ms`` -> ``Latency_ms``)."""
    clean = _INVALID.sub("_", name)
    return clean if clean[:1].isalpha() else f"m_{clean}"


def _check_name(name: str) -> None:
    if not name or _INVALID.search(name) or not name[0].isalpha():
        raise ValueError(f"invalid metric name {name!r}: use letters, digits and '_', starting with a letter")


def _dimension_labels(dimensions: Iterable[Any] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for dimension in dimensions or ():
        name = getattr(dimension, "name", None)
        if not isinstance(name, str):
            raise MetricsCacheTypeError(f"a dimension needs a name and a value, got {dimension!r}")
        if name in TORCHSERVE_IMPLIED_DIMENSIONS:
            continue
        label = _prometheus_name(name)
        if label in RESERVED_LABELS:
            label = f"dimension_{label}"
        labels[label] = str(getattr(dimension, "value", ""))
    return labels


def _kind(metric_type: Any) -> MetricKind:
    try:
        return MetricKind(getattr(metric_type, "value", metric_type))
    except ValueError:
        raise MetricsCacheTypeError(f"metric_type must be a MetricTypes member, got {metric_type!r}") from None


@dataclass
class _Dimension:
    name: str
    value: str


class CachedMetric:
    """A metric declared once (name, unit, dimension names, type) and updated with dimension values."""

    def __init__(
        self, sink: HandlerMetrics, name: str, unit: str, dimension_names: Sequence[str], kind: MetricKind
    ) -> None:
        self._sink = sink
        self.metric_name = name
        self.unit = unit
        self.dimension_names = list(dimension_names)
        self.metric_type = kind

    def add_or_update(self, value: float, dimension_values: Sequence[Any] = (), request_id: str = "") -> None:
        """Record ``value`` for the given dimension values (one per dimension name, in order)."""
        del request_id  # TorchServe logs it; a Prometheus series never carries a request id
        if len(dimension_values) != len(self.dimension_names):
            raise MetricsCacheValueError(
                f"metric {self.metric_name!r} has dimensions {self.dimension_names}, "
                f"got values {list(dimension_values)}"
            )
        dimensions = [_Dimension(n, str(v)) for n, v in zip(self.dimension_names, dimension_values, strict=True)]
        self._sink.record_torchserve(self.metric_type, self.metric_name, value, dimensions)

    def update(self, value: float, request_id: str = "", dimensions: Sequence[Any] = ()) -> None:
        """The older form: the dimensions (objects with ``name`` and ``value``) replace the declared ones."""
        self.dimension_names = [str(getattr(d, "name", "")) for d in dimensions]
        self.add_or_update(value, [getattr(d, "value", "") for d in dimensions], request_id)


class HandlerMetrics:
    """The metrics a handler adds during a batch; drained into each reply frame."""

    def __init__(self, model_name: str = "") -> None:
        self.model_name = model_name
        self.request_ids: dict[int, str] | None = None
        self._samples: list[MetricSample] = []
        self._cache: dict[tuple[MetricKind, str], CachedMetric] = {}

    # modelserve's style

    def add_counter(
        self,
        name: str,
        value: float = 1.0,
        labels: dict[str, str] | Any = None,
        dimensions: list[Any] | str | None = None,
        description: str = "",
        *,
        idx: Any = None,
    ) -> None:
        """Increase counter ``name``.

        Both ``add_counter(name, value, {"label": "v"}, "description")`` (modelserve) and TorchServe's
        ``add_counter(name, value, idx, [Dimension(...)])`` work: a non-dict third argument is TorchServe's request
        index, a list fourth argument its dimensions.
        """
        del idx
        if isinstance(dimensions, str):
            description, dimensions = dimensions, None
        if value < 0:
            raise MetricsCacheValueError("a counter can only increase")
        if isinstance(labels, dict) and dimensions is None:
            self._record(MetricKind.COUNTER, name, value, labels, description)
            return
        self.record_torchserve(MetricKind.COUNTER, name, value, dimensions)

    def set_gauge(self, name: str, value: float, labels: dict[str, str] | None = None, description: str = "") -> None:
        self._record(MetricKind.GAUGE, name, value, labels, description)

    def observe(self, name: str, value: float, labels: dict[str, str] | None = None, description: str = "") -> None:
        """Add one observation to histogram ``name``."""
        self._record(MetricKind.HISTOGRAM, name, value, labels, description)

    # TorchServe's metrics cache

    def add_metric(
        self,
        name: str,
        value: float,
        unit: str = "",
        idx: Any = None,
        dimensions: list[Any] | None = None,
        metric_type: Any = MetricKind.COUNTER,
    ) -> None:
        del unit, idx
        self.record_torchserve(_kind(metric_type), name, value, dimensions)

    def add_time(
        self,
        name: str,
        value: float,
        idx: Any = None,
        unit: str = "ms",
        dimensions: list[Any] | None = None,
        metric_type: Any = MetricKind.GAUGE,
    ) -> None:
        del idx
        if unit not in TIME_UNITS:
            raise MetricsCacheValueError(f"the unit of a time metric is one of {list(TIME_UNITS)}, got {unit!r}")
        self.record_torchserve(_kind(metric_type), name, value, dimensions)

    def add_size(
        self,
        name: str,
        value: float,
        idx: Any = None,
        unit: str = "MB",
        dimensions: list[Any] | None = None,
        metric_type: Any = MetricKind.GAUGE,
    ) -> None:
        del idx
        if unit not in SIZE_UNITS:
            raise MetricsCacheValueError(f"the unit of a size metric is one of {list(SIZE_UNITS)}, got {unit!r}")
        self.record_torchserve(_kind(metric_type), name, value, dimensions)

    def add_percent(
        self,
        name: str,
        value: float,
        idx: Any = None,
        dimensions: list[Any] | None = None,
        metric_type: Any = MetricKind.GAUGE,
    ) -> None:
        del idx
        self.record_torchserve(_kind(metric_type), name, value, dimensions)

    def add_error(self, name: str, value: float, dimensions: list[Any] | None = None) -> None:
        self.record_torchserve(MetricKind.COUNTER, name, value, dimensions)

    def add_metric_to_cache(
        self,
        metric_name: str,
        unit: str,
        dimension_names: list[str] | None = None,
        metric_type: Any = MetricKind.COUNTER,
    ) -> CachedMetric:
        """Declare a metric (replacing one of the same name and type) and return it for ``add_or_update``."""
        if not isinstance(metric_name, str) or not isinstance(unit, str):
            raise MetricsCacheTypeError("metric_name and unit must be strings")
        if dimension_names is not None and not isinstance(dimension_names, list):
            raise MetricsCacheTypeError("dimension_names must be a list of strings")
        kind = _kind(metric_type)
        metric = CachedMetric(self, metric_name, unit, dimension_names or [], kind)
        self._cache[(kind, metric_name)] = metric
        return metric

    def get_metric(self, metric_name: str, metric_type: Any = MetricKind.COUNTER) -> CachedMetric:
        kind = _kind(metric_type)
        try:
            return self._cache[(kind, metric_name)]
        except KeyError:
            raise MetricsCacheKeyError(
                f"metric of type {kind.value!r} and name {metric_name!r} does not exist"
            ) from None

    def cache_keys(self) -> list[str]:
        return [f"{kind.value}:{name}" for kind, name in self._cache]

    def set_request_ids(self, request_ids: dict[int, str] | None) -> None:
        self.request_ids = request_ids

    # both

    def record_torchserve(self, kind: MetricKind, name: str, value: float, dimensions: Iterable[Any] | None) -> None:
        """A TorchServe-style update: its names may hold dots or dashes, its dimensions become labels."""
        if kind is MetricKind.COUNTER and value < 0:
            raise MetricsCacheValueError("a counter can only increase")
        self._samples.append(
            MetricSample(kind.value, _prometheus_name(name), float(value), _dimension_labels(dimensions))
        )

    def _record(
        self, kind: MetricKind, name: str, value: float, labels: dict[str, str] | None, description: str
    ) -> None:
        _check_name(name)
        clean = {str(k): str(v) for k, v in (labels or {}).items()}
        for label in clean:
            _check_name(label)
            if label in RESERVED_LABELS:
                raise ValueError(f"label {label!r} is set by the server")
        self._samples.append(MetricSample(kind.value, name, float(value), clean, description))

    def drain(self) -> list[MetricSample]:
        samples, self._samples = self._samples, []
        return samples
