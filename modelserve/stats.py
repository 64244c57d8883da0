"""Per-version counters and histograms, kept as plain objects on each model version.

They live with the version, so a version that is unregistered takes its series with it: ``/metrics`` never shows
stale series. ``modelserve.server.metrics_app`` turns them into Prometheus families at scrape time.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from modelserve.handler_metrics import MetricKind

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Cumulative-bucket histogram, Prometheus style."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # last slot is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
        return out


@dataclass
class HandlerSeries:
    """One handler-defined metric (all its label sets)."""

    kind: MetricKind
    description: str
    label_names: tuple[str, ...]
    values: dict[tuple[str, ...], float] = field(default_factory=dict)
    histograms: dict[tuple[str, ...], Histogram] = field(default_factory=dict)


class VersionStats:
    """Everything ``/metrics`` reports about one model version."""

    def __init__(self) -> None:
        self.requests: Counter[int] = Counter()
        self.latency = Histogram()
        self.queue_wait = Histogram()
        self.handler_steps: dict[str, Histogram] = {}
        self.batch_size = Histogram(tuple(float(b) for b in BATCH_BUCKETS))
        self.stream_first_piece = Histogram()  # streamed answers: from arrival to the first piece relayed
        self.worker_restarts = 0  # workers that died after they were ready
        self.worker_load_failures = 0  # worker starts that failed (load error, timeout, killed while starting)
        self.worker_recycles: Counter[str] = Counter()  # workers replaced on purpose, by reason ("memory")
        self.handler_metrics: dict[str, HandlerSeries] = {}

    def record_request(self, status: int, latency_s: float) -> None:
        self.requests[status] += 1
        self.latency.observe(latency_s)

    def record_batch(self, size: int, queue_waits_s: list[float], timings: dict[str, float]) -> None:
        self.batch_size.observe(size)
        for wait in queue_waits_s:
            self.queue_wait.observe(wait)
        for step, seconds in timings.items():
            histogram = self.handler_steps.get(step)
            if histogram is None:
                histogram = self.handler_steps[step] = Histogram()
            histogram.observe(seconds)

    def record_handler_metrics(self, samples: list[dict[str, Any]]) -> None:
        for sample in samples:
            labels: dict[str, str] = sample.get("labels", {})
            names = tuple(sorted(labels))
            try:
                kind = MetricKind(sample["kind"])
            except ValueError:
                continue  # not a metric type: the worker's metrics module would not have sent it
            series = self.handler_metrics.get(sample["name"])
            if series is None:
                series = HandlerSeries(kind, sample.get("description", ""), names)
                self.handler_metrics[sample["name"]] = series
            if series.kind is not kind or series.label_names != names:
                continue  # a handler changed a metric's type or labels: keep the first definition
            key = tuple(labels[n] for n in names)
            value = float(sample["value"])
            if kind is MetricKind.COUNTER:
                series.values[key] = series.values.get(key, 0.0) + value
            elif kind is MetricKind.GAUGE:
                series.values[key] = value
            else:
                series.histograms.setdefault(key, Histogram()).observe(value)
