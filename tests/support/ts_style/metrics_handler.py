"""A custom-service class with no base class that adds metrics through the TorchServe metrics API."""

from typing import Any

from ts.metrics.dimension import Dimension
from ts.metrics.metric_type_enum import MetricTypes


class MetricsHandler:
    def __init__(self) -> None:
        self.initialized = False
        self.requests: Any = None

    def initialize(self, context: Any) -> None:
        self.requests = context.metrics.add_metric_to_cache("ParityRequests", "count", ["Color"], MetricTypes.COUNTER)
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        metrics = context.metrics
        for _ in data:
            self.requests.add_or_update(1, ["red"])
        metrics.add_counter("ParityCalls", 1, None, [Dimension("Kind", "call")])
        metrics.add_time("ParityTime", 1.5, None, "ms")
        metrics.add_size("ParitySize", 2.0, None, "MB")
        metrics.add_percent("ParityPercent", 50.0)
        metrics.add_metric("ParityGeneric", 3, "count", None, [Dimension("Kind", "generic")], MetricTypes.GAUGE)
        return [{"seen": len(data)} for _ in data]
