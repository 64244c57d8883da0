"""The errors TorchServe's metrics cache raises, under its names."""

from modelserve.handler_metrics import (
    MetricsCacheError as GeneralMetricsCacheError,
)
from modelserve.handler_metrics import (
    MetricsCacheKeyError,
    MetricsCacheTypeError,
    MetricsCacheValueError,
)


class MetricsCacheIOError(GeneralMetricsCacheError, OSError):
    """The metrics YAML file cannot be read."""


class MetricsCachePyYamlError(GeneralMetricsCacheError, ValueError):
    """The metrics YAML file is not valid YAML."""


__all__ = [
    "GeneralMetricsCacheError",
    "MetricsCacheIOError",
    "MetricsCacheKeyError",
    "MetricsCachePyYamlError",
    "MetricsCacheTypeError",
    "MetricsCacheValueError",
]
