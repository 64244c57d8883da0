"""The metrics application: Prometheus text from a registry the server owns (never the global one)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from modelserve.handler_metrics import MetricKind
from modelserve.models.version import ModelVersion, VersionState
from modelserve.server.errors import error_middleware
from modelserve.server.inference import add_description_routes
from modelserve.server.openapi import DESCRIBE_ROUTES, RouteDoc
from modelserve.server.routing import accept_trailing_slashes
from modelserve.server.state import STATE, ServerState
from modelserve.stats import Histogram

VERSION_LABELS = ["model_name", "model_version"]
ROUTES = [*DESCRIBE_ROUTES, RouteDoc("GET", "/metrics", "Prometheus metrics", responses={200: "Prometheus text"})]


def _histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    family.add_metric(labels, histogram.cumulative(), histogram.sum)


class ServerCollector(Collector):
    """Builds every family at scrape time from the live registry: unregistered versions simply vanish."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.disk_path = Path(state.store.root) if state.store.root else Path.cwd()
        psutil.cpu_percent(None)  # prime the CPU counter so the first scrape has a real figure

    def collect(self) -> Iterator[Metric]:
        versions = self.state.registry.all_versions()
        yield from self._request_families(versions)
        yield from self._worker_families(versions)
        yield from self._handler_families(versions)
        yield from self._system_families()

    def _request_families(self, versions: list[ModelVersion]) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "modelserve_requests", "Inference requests by response status", labels=[*VERSION_LABELS, "status"]
        )
        latency = HistogramMetricFamily(
            "modelserve_request_duration_seconds", "End-to-end inference latency in the server", labels=VERSION_LABELS
        )
        queue = HistogramMetricFamily(
            "modelserve_queue_wait_seconds", "Time from arrival to being sent to a worker", labels=VERSION_LABELS
        )
        handler = HistogramMetricFamily(
            "modelserve_handler_duration_seconds", "Time in the handler per batch, by step",
            labels=[*VERSION_LABELS, "step"],
        )  # fmt: skip
        batch = HistogramMetricFamily(
            "modelserve_batch_size", "Requests per batch sent to a worker", labels=VERSION_LABELS
        )
        first_piece = HistogramMetricFamily(
            "modelserve_stream_first_piece_seconds", "Streamed answers: time from arrival to the first piece",
            labels=VERSION_LABELS,
        )  # fmt: skip
        depth = GaugeMetricFamily("modelserve_queue_depth", "Requests waiting in the queue", labels=VERSION_LABELS)
        in_flight = GaugeMetricFamily(
            "modelserve_requests_in_flight", "Requests handed to workers, not yet answered", labels=VERSION_LABELS
        )
        for v in versions:
            labels = [v.name, v.version]
            for status, count in sorted(v.stats.requests.items()):
                requests.add_metric([*labels, str(status)], count)
            _histogram(latency, labels, v.stats.latency)
            _histogram(queue, labels, v.stats.queue_wait)
            for step, histogram in sorted(v.stats.handler_steps.items()):
                _histogram(handler, [*labels, step], histogram)
            _histogram(batch, labels, v.stats.batch_size)
            _histogram(first_piece, labels, v.stats.stream_first_piece)
            depth.add_metric(labels, len(v.batcher))
            in_flight.add_metric(labels, v.pool.in_flight)
        yield from (requests, latency, queue, handler, batch, first_piece, depth, in_flight)

    def _worker_families(self, versions: list[ModelVersion]) -> Iterator[Metric]:
        live = GaugeMetricFamily("modelserve_workers_live", "Workers alive and ready", labels=VERSION_LABELS)
        restarts = CounterMetricFamily(
            "modelserve_worker_restarts", "Workers replaced after dying", labels=VERSION_LABELS
        )
        load_failures = CounterMetricFamily(
            "modelserve_worker_load_failures",
            "Worker starts that failed (load error, startup timeout, killed while starting)",
            labels=VERSION_LABELS,
        )
        recycles = CounterMetricFamily(
            "modelserve_worker_recycles",
            "Workers replaced on purpose after a batch (reason: memory, over workerMemoryLimit)",
            labels=[*VERSION_LABELS, "reason"],
        )
        rss = GaugeMetricFamily("modelserve_worker_rss_bytes", "Resident memory of each worker",
                                labels=[*VERSION_LABELS, "worker_id", "node"])  # fmt: skip
        ready = GaugeMetricFamily("modelserve_model_ready", "1 when the version is READY", labels=VERSION_LABELS)
        for v in versions:
            labels = [v.name, v.version]
            live.add_metric(labels, v.pool.ready_count())
            restarts.add_metric(labels, v.stats.worker_restarts)
            load_failures.add_metric(labels, v.stats.worker_load_failures)
            for reason in sorted({"memory", *v.stats.worker_recycles}):
                recycles.add_metric([*labels, reason], v.stats.worker_recycles[reason])
            ready.add_metric(labels, 1.0 if v.state is VersionState.READY else 0.0)
            for worker in v.pool.workers():
                if worker.alive:
                    usage = worker.usage()
                    if usage.memory_bytes:
                        node = usage.node or "local"  # a cluster node's id with the Ray backend
                        rss.add_metric([*labels, worker.worker_id, node], usage.memory_bytes)
        yield from (live, restarts, load_failures, recycles, rss, ready)

    def _handler_families(self, versions: list[ModelVersion]) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for v in versions:
            for name, series in v.stats.handler_metrics.items():
                full = f"modelserve_handler_{name}"
                labels = [*VERSION_LABELS, *series.label_names]
                family = families.get(full)
                if family is None:
                    description = series.description or f"handler metric {name}"
                    if series.kind is MetricKind.COUNTER:
                        family = CounterMetricFamily(full, description, labels=labels)
                    elif series.kind is MetricKind.GAUGE:
                        family = GaugeMetricFamily(full, description, labels=labels)
                    else:
                        family = HistogramMetricFamily(full, description, labels=labels)
                    families[full] = family
                for key, value in series.values.items():
                    family.add_metric([v.name, v.version, *key], value)  # type: ignore[attr-defined]
                for key, histogram in series.histograms.items():
                    _histogram(family, [v.name, v.version, *key], histogram)  # type: ignore[arg-type]
        yield from families.values()

    def _system_families(self) -> Iterator[Metric]:
        memory = psutil.virtual_memory()
        disk = shutil.disk_usage(self.disk_path)
        yield GaugeMetricFamily("modelserve_system_cpu_utilization_ratio", "Machine CPU use, 0 to 1",
                                value=psutil.cpu_percent(None) / 100.0)  # fmt: skip
        yield GaugeMetricFamily("modelserve_system_memory_used_bytes", "Machine memory in use", value=memory.used)
        yield GaugeMetricFamily("modelserve_system_memory_available_bytes", "Machine memory available",
                                value=memory.available)  # fmt: skip
        yield GaugeMetricFamily("modelserve_system_memory_utilization_ratio", "Machine memory use, 0 to 1",
                                value=memory.percent / 100.0)  # fmt: skip
        yield GaugeMetricFamily("modelserve_system_disk_used_bytes", "Disk used where the model store lives",
                                value=disk.used)  # fmt: skip
        yield GaugeMetricFamily("modelserve_system_disk_free_bytes", "Disk free where the model store lives",
                                value=disk.free)  # fmt: skip
        yield GaugeMetricFamily("modelserve_uptime_seconds", "Seconds since the server started",
                                value=time.monotonic() - self.state.started_at)  # fmt: skip


def create_metrics_app(state: ServerState) -> web.Application:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(state))

    async def metrics(request: web.Request) -> web.Response:
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[error_middleware])
    app[STATE] = state
    add_description_routes(app, "Metrics API", ROUTES)
    app.router.add_get("/metrics", metrics)
    accept_trailing_slashes(app)
    return app
