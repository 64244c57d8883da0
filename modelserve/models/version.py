"""One loaded model version: its extracted archive, configuration, queue, batcher and worker pool."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from modelserve.archive.reader import ExtractedArchive
from modelserve.batching.batcher import Batcher, Job
from modelserve.batching.types import InferRequest, Protocol, new_request_id
from modelserve.config import ModelConfig
from modelserve.errors import ServiceUnavailableError
from modelserve.runtimes import needs_torch, platform_for
from modelserve.stats import VersionStats
from modelserve.workers.backend import WorkerBackend, WorkerSpec
from modelserve.workers.pool import PoolSettings, WorkerPool
from modelserve.workers.protocol import InitMessage


class VersionState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    FAILED = "FAILED"
    UNLOADING = "UNLOADING"


class ModelVersion:
    def __init__(
        self,
        name: str,
        version: str,
        url: str,
        extracted: ExtractedArchive,
        config: ModelConfig,
        loaded_at_startup: bool,
        max_load_failures: int,
        thread_count: Callable[[ModelConfig], int],
        backend: WorkerBackend,
        handler: str | None = None,
        python_path: list[str] | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.url = url
        self.extracted = extracted
        self.python_path = python_path or []
        self.config = config
        self.loaded_at_startup = loaded_at_startup
        self.handler = handler or extracted.manifest.handler
        self.unloading = False
        self.stats = VersionStats()
        self.batcher = Batcher(config.job_queue_size)
        self.backend = backend
        self.spec = WorkerSpec(
            label=f"{name}:{version}",
            model_dir=extracted.root,
            needs_torch=needs_torch(extracted.manifest),
            python_path=tuple(Path(p) for p in self.python_path),
            intra_op_threads=config.intra_op_threads,
            num_cpus=config.num_cpus,
            num_gpus=config.num_gpus,
            resources=dict(config.ray_resources),
        )
        self.pool = WorkerPool(
            label=f"{name}:{version}",
            batcher=self.batcher,
            settings=PoolSettings(
                batch_size=config.batch_size,
                max_batch_delay_s=config.max_batch_delay_ms / 1000.0,
                response_timeout_s=config.response_timeout_s,
                startup_timeout_s=config.startup_timeout_s,
                max_load_failures=max_load_failures,
                memory_limit_bytes=config.worker_memory_limit_bytes,
                batch_size_auto=not config.batch_size_explicit,
            ),
            stats=self.stats,
            make_init=self._init_message,
            thread_count=lambda: thread_count(self.config),
            backend=backend,
            spec=self.spec,
        )
        self.min_workers = config.min_workers
        self.max_workers = config.max_workers

    def _init_message(self, worker_id: str) -> InitMessage:
        manifest = self.extracted.manifest
        return InitMessage(
            model_name=self.name,
            model_version=self.version,
            model_dir=str(self.extracted.root),
            handler=self.handler,
            manifest=manifest.to_dict(),
            model_config={**self.config.raw, "handler": self.config.handler, "optimize": self.config.optimize},
            batch_size=self.config.batch_size,
            intra_op_threads=self.pool.thread_count(),
            worker_id=worker_id,
            python_path=self.python_path,
            envelope=self.config.service_envelope,
            batch_size_auto=self.pool.settings.batch_size_auto,
        )

    @property
    def state(self) -> VersionState:
        if self.unloading:
            return VersionState.UNLOADING
        if self.pool.failed:
            return VersionState.FAILED
        if self.pool.ready_count() > 0 or self.min_workers == 0:
            return VersionState.READY
        return VersionState.LOADING

    @property
    def signature(self) -> dict[str, Any]:
        """The model's inputs and outputs, as its workers reported them."""
        return self.pool.signature

    @property
    def batch_size(self) -> int:
        """The batch size in use: the configured one, or (none configured) the one the handler declared, else 1."""
        return self.pool.settings.batch_size

    @property
    def platform(self) -> str:
        return platform_for(self.extracted.manifest)

    @property
    def healthy(self) -> bool:
        """Enough live workers for its minimum (what /ping checks)."""
        return self.pool.failed is False and self.pool.ready_count() >= self.min_workers

    def submit(
        self,
        body: bytes,
        content_type: str,
        headers: dict[str, str],
        request_id: str | None = None,
        protocol: Protocol = Protocol.TORCHSERVE,
    ) -> Job:
        """Queue one request; raise ServiceUnavailableError when it cannot be served now."""
        if self.unloading:
            raise ServiceUnavailableError(f"model {self.name} version {self.version} is being unregistered")
        if self.pool.failed:
            raise ServiceUnavailableError(
                f"model {self.name} version {self.version} failed to load: {self.pool.last_error}", retry_after_s=30
            )
        if self.pool.target == 0:
            raise ServiceUnavailableError(f"no worker is available to serve model {self.name}; scale it up first")
        request = InferRequest(
            request_id=request_id or new_request_id(),
            content_type=content_type,
            headers=headers,
            body=body,
            protocol=protocol.value,
        )
        job = Job(request=request, future=asyncio.get_running_loop().create_future())
        self.batcher.submit(job)
        return job

    async def start(self, workers: int) -> None:
        """Have the backend ready for this version's workers, then start ``workers`` of them."""
        await self.backend.prepare(self.spec)
        await self.pool.scale(workers)

    async def wait_ready(self) -> None:
        await self.pool.wait_ready(self.config.startup_timeout_s * max(1, self.pool.settings.max_load_failures))

    async def scale(self, min_workers: int, max_workers: int) -> None:
        self.min_workers = min_workers
        self.max_workers = max_workers
        await self.pool.scale(min_workers)

    async def unload(self, drain_timeout_s: float) -> None:
        """Stop taking requests, let queued and in-flight ones finish, stop the workers, remove the files."""
        self.unloading = True
        await self.pool.drain(drain_timeout_s)
        self.batcher.closed = True
        self.batcher.fail_all(ServiceUnavailableError(f"model {self.name} version {self.version} was unregistered"))
        await self.pool.stop()
        await self.backend.release(self.spec)
        self.extracted.cleanup()

    def describe(self) -> dict[str, Any]:
        workers = []
        for worker in self.pool.workers():
            usage = worker.usage()
            entry: dict[str, Any] = {
                "id": worker.worker_id,
                "startTime": datetime.fromtimestamp(worker.handle.start_time, timezone.utc).isoformat(),
                "status": worker.state.value if worker.alive else "STOPPED",
                "memoryUsage": usage.memory_bytes,
                "pid": usage.pid,
                "gpu": False,
            }
            if usage.node is not None:
                entry["node"] = usage.node
            if usage.address is not None:
                entry["nodeAddress"] = usage.address
            workers.append(entry)
        description: dict[str, Any] = {
            "modelName": self.name,
            "modelVersion": self.version,
            "modelUrl": self.url,
            "runtime": self.extracted.manifest.runtime,
            "handler": self.handler,
            "status": self.state.value,
            "minWorkers": self.min_workers,
            "maxWorkers": self.max_workers,
            "batchSize": self.batch_size,
            "maxBatchDelay": self.config.max_batch_delay_ms,
            "responseTimeout": self.config.response_timeout_s,
            "startupTimeout": self.config.startup_timeout_s,
            "loadedAtStartup": self.loaded_at_startup,
            "workers": workers,
            "jobQueueStatus": {
                "remainingCapacity": self.batcher.remaining_capacity,
                "pendingRequests": len(self.batcher),
            },
        }
        if self.pool.last_error and self.state in (VersionState.FAILED, VersionState.LOADING):
            description["error"] = self.pool.last_error
        return description
