"""The worker-backend seam: where a version's workers run and how the parent talks to one of them.

A backend (``WorkerBackend``) makes worker handles for a version and owns what they share (the local backend's fork
template, a cluster connection). A handle (``WorkerHandle``) is a transport to one worker: start it with its init
message, send it a batch, stop or kill it, say why it went and what it uses. Everything that is the same for every
backend lives above the handles, in ``channel.py`` (one batch at the worker at a time, the next armed behind it,
per-batch timeouts, matching replies) and ``pool.py`` (slots, least-loaded dispatch, replacement with back-off).

Backends are chosen by name (the ``worker_backend`` setting) from ``BACKENDS``, import paths loaded only when
selected, so a backend's dependencies are imported only by servers that use it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from modelserve.errors import ConfigError

if TYPE_CHECKING:
    from modelserve.config import ServerConfig
    from modelserve.errors import WorkerDiedError
    from modelserve.workers.protocol import (
        CancelMessage,
        CreditMessage,
        InferMessage,
        InitMessage,
        ResultMessage,
        StreamEndMessage,
        StreamPieceMessage,
    )

# name -> "module:attribute" of a class taking the ServerConfig
BACKENDS: Mapping[str, str] = {
    "local": "modelserve.workers.local:LocalBackend",
    "ray": "modelserve.workers.ray_backend:RayBackend",
}


@dataclass(frozen=True)
class WorkerUsage:
    """What a worker uses now, as far as its backend can tell (0 / None where it cannot)."""

    memory_bytes: int = 0
    pid: int | None = None
    node: str | None = None  # the cluster node that runs it (None: this machine)
    address: str | None = None  # that node's address


@dataclass(frozen=True)
class WorkerSpec:
    """What a backend needs to know about a version to place and start its workers."""

    label: str  # "model:version"
    model_dir: Path
    needs_torch: bool  # whether the workers import torch (the local backend forks them from its torch template)
    python_path: tuple[Path, ...] = ()  # directories of the version's own dependencies, first on sys.path
    intra_op_threads: int = 0  # an explicit intraOpThreads (0: the backend's thread policy decides)
    # what one worker asks of a cluster node (model-config.yaml num_cpus, num_gpus, rayResources)
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: Mapping[str, float] = field(default_factory=dict)


class WorkerEvents(Protocol):
    """What a handle reports, from the event loop, after ``start`` returned."""

    def on_reply(self, message: ResultMessage) -> None:
        """A batch's reply arrived (the oldest batch sent: one computes at a time)."""

    def on_stream(self, message: StreamPieceMessage | StreamEndMessage) -> None:
        """A piece or the end of a streamed answer of the batch at the worker (before or after its reply)."""

    def on_lost(self, error: WorkerDiedError) -> None:
        """The worker can take and answer nothing more: it exited, its connection closed, or it broke protocol."""


class WorkerHandle(Protocol):
    """The parent's handle on one worker, whatever runs it."""

    worker_id: str
    start_time: float  # wall clock, for describe
    signature: dict[str, Any]  # the model's inputs and outputs as the worker reported them when ready
    batch_size: int  # the batch size its handler declared when the init left it to the handler (0: none)

    @property
    def alive(self) -> bool:
        """Started and not known to have exited."""

    async def start(self, init: InitMessage, startup_timeout_s: float, events: WorkerEvents) -> None:
        """Start the worker and wait until its handler initialized; raise WorkerLoadError when it cannot."""

    def send(self, message: InferMessage) -> None:
        """Hand one batch to the worker (it does not wait); raise WorkerDiedError when it is gone."""

    def send_control(self, message: CreditMessage | CancelMessage) -> None:
        """Hand a stream's credit or cancel frame to the worker; raise WorkerDiedError when it is gone."""

    async def wait_exit(self) -> str:
        """Wait until the worker is gone; return why, in words (``exit code 1``, ``killed by signal SIGKILL``)."""

    async def stop(self, grace_s: float = 5.0) -> None:
        """Ask the worker to exit after what it is doing; kill it after ``grace_s``."""

    async def kill(self) -> None:
        """End the worker now."""

    def usage(self) -> WorkerUsage:
        """Memory, pid or node of the worker, for describe, metrics and workerMemoryLimit."""


class WorkerBackend(Protocol):
    """Makes the workers of every version of a server."""

    name: str

    def cores(self) -> int:
        """Cores the workers share: the thread policy divides them among the running workers."""

    async def prepare(self, spec: WorkerSpec) -> None:
        """Get ready to start workers of ``spec`` (start a template, ship an archive); called once per version."""

    def create(self, spec: WorkerSpec, worker_id: str, log_prefix: str, threads: int) -> WorkerHandle:
        """A handle for a new worker of ``spec`` running ``threads`` intra-op threads (0: the environment's)."""

    async def release(self, spec: WorkerSpec) -> None:
        """The version is gone: drop what ``prepare`` kept for it."""

    async def stop(self) -> None:
        """The server stops: release everything (every handle has been stopped already)."""


def load_backend(name: str, config: ServerConfig) -> WorkerBackend:
    """The backend called ``name`` in ``BACKENDS``, constructed for ``config``; ConfigError naming the choices."""
    target = BACKENDS.get(name)
    if target is None:
        raise ConfigError(f"unknown worker_backend {name!r} (choose one of: {', '.join(sorted(BACKENDS))})")
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"worker_backend {name!r} is not available: {exc}") from exc
    backend: WorkerBackend = getattr(module, attribute)(config)
    return backend
