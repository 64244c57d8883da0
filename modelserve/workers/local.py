"""The local worker backend: workers are processes of this machine.

A worker is started, sent batches, read from and stopped here; what to send when, and timeouts, are the channel's.

Workers are separate programs (``python -m modelserve.workers.main``) that inherit nothing of the parent but one end
of a unix socket pair. Their stdout and stderr are read line by line into the server log with a
``[model:version:worker]`` prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import psutil

from modelserve.errors import WorkerDiedError, WorkerLoadError
from modelserve.workers.backend import WorkerEvents, WorkerSpec, WorkerUsage
from modelserve.workers.frames import FrameRouter, FrameSplitter, await_ready
from modelserve.workers.protocol import (
    CancelMessage,
    CreditMessage,
    InferMessage,
    InitMessage,
    Message,
    ShutdownMessage,
    encode,
)
from modelserve.workers.template import ForkedProcess, WorkerTemplate

if TYPE_CHECKING:
    from modelserve.config import ServerConfig

_LEVEL_NAMES = {name: getattr(logging, name) for name in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")}
log = logging.getLogger("modelserve.worker")


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "no exit status"
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class _FrameReader(asyncio.Protocol):
    """Hands each whole frame of the worker's socket over inside ``data_received`` itself.

    No task waits for replies: a reply is matched and its results delivered in the same event-loop step that read
    it (a StreamReader would wake a reader task one step later).
    """

    def __init__(self, on_frame: Callable[[bytes], None], on_closed: Callable[[], None]) -> None:
        self._splitter = FrameSplitter(on_frame)
        self._on_closed = on_closed
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports implement it without subclassing

    def data_received(self, data: bytes) -> None:
        self._splitter.feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_closed()


class LocalWorker:
    """A worker process on this machine (a ``WorkerHandle``), forked from the template or started as a program."""

    def __init__(
        self, worker_id: str, log_prefix: str, env: Mapping[str, str], template: WorkerTemplate | None
    ) -> None:
        self.worker_id = worker_id
        self.log_prefix = log_prefix
        self.start_time = time.time()
        self.signature: dict[str, Any] = {}
        self.batch_size = 0
        self.process: asyncio.subprocess.Process | ForkedProcess | None = None
        self._env = env
        self._template = template
        self._transport: asyncio.Transport | None = None
        self._router = FrameRouter(self._broken)
        self._closing = False
        self._closed_task: asyncio.Task[None] | None = None
        self._log_tasks: list[asyncio.Task[None]] = []
        self._kill_task: asyncio.Task[None] | None = None
        self._ps: psutil.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def usage(self) -> WorkerUsage:
        """The worker's pid and resident memory now (0 when it cannot be read)."""
        pid = self.pid
        if pid is None or not self.alive:
            return WorkerUsage(pid=pid)
        try:
            if self._ps is None or self._ps.pid != pid:
                self._ps = psutil.Process(pid)
            return WorkerUsage(memory_bytes=int(self._ps.memory_info().rss), pid=pid)
        except psutil.Error:
            return WorkerUsage(pid=pid)

    async def start(self, init: InitMessage, startup_timeout_s: float, events: WorkerEvents) -> None:
        """Start the worker (forked from the template when given) and wait until its handler initialized."""
        self._router.events = events
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        template = self._template
        try:
            if template is not None and template.available:
                try:
                    self.process = await template.spawn(child_sock.fileno(), self._env)
                except OSError as exc:
                    log.warning("worker template failed (%s); starting %s as a separate program", exc, self.worker_id)
            if self.process is None:
                self.process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "modelserve.workers.main", "--fd", str(child_sock.fileno()),
                    pass_fds=(child_sock.fileno(),),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=dict(self._env),
                )  # fmt: skip
        except OSError as exc:
            parent_sock.close()
            raise WorkerLoadError(f"cannot start a worker process: {exc}") from exc
        except BaseException:
            parent_sock.close()  # cancelled while starting: the caller kills the process, the socket goes here
            raise
        finally:
            child_sock.close()
        self._log_tasks = [
            asyncio.create_task(self._pump(self.process.stdout, logging.INFO)),
            asyncio.create_task(self._pump(self.process.stderr, logging.WARNING)),
        ]
        loop = asyncio.get_running_loop()
        first = self._router.expect_first()
        try:
            transport, _ = await loop.create_unix_connection(
                lambda: _FrameReader(self._router.on_frame, self._on_closed), sock=parent_sock
            )
        except BaseException:
            parent_sock.close()
            raise
        self._transport = transport
        self._send(init)
        ready = await await_ready(first, startup_timeout_s, startup_timeout_s, self.kill)
        self.signature = ready.signature
        self.batch_size = ready.batch_size

    async def _pump(self, stream: asyncio.StreamReader | None, level: int) -> None:
        if stream is None:
            return
        while True:
            try:
                line = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue  # an over-long line: skip it rather than stop logging
            if not line:
                return
            text = line.decode("utf-8", "replace").rstrip()
            head, _, rest = text.partition(" ")
            line_level = _LEVEL_NAMES.get(head)  # a line of the worker's own logging keeps its level
            if line_level is None:
                log.log(level, "[%s] %s", self.log_prefix, text)
            else:
                log.log(line_level, "[%s] %s", self.log_prefix, rest)

    def _send(self, message: Message) -> None:
        if self._transport is None or self._transport.is_closing():
            raise WorkerDiedError("worker connection closed")
        self._transport.writelines(encode(message))

    def send(self, message: InferMessage) -> None:
        self._send(message)

    def send_control(self, message: CreditMessage | CancelMessage) -> None:
        self._send(message)

    def _broken(self, reason: str) -> None:
        """The worker broke the protocol: report it lost and kill it."""
        self._router.lost(WorkerDiedError(reason))
        if self._kill_task is None:
            self._kill_task = asyncio.create_task(self.kill())

    def _on_closed(self) -> None:
        """The worker's end of the socket closed: report it lost with the reason it exited."""
        if self._closing:
            return
        self._closed_task = asyncio.create_task(self._report_exit())

    async def _report_exit(self) -> None:
        self._router.lost(WorkerDiedError(await self._death_reason()))

    async def _death_reason(self) -> str:
        assert self.process is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), 2.0)
        return describe_exit(self.process.returncode)

    async def wait_exit(self) -> str:
        assert self.process is not None
        return f"worker exited ({describe_exit(await self.process.wait())})"

    async def stop(self, grace_s: float = 5.0) -> None:
        """Ask the worker to exit; kill it if it does not within ``grace_s``."""
        if self.alive:
            with contextlib.suppress(WorkerDiedError, ConnectionError, RuntimeError):
                self._send(ShutdownMessage())
        if self.process is not None:
            try:
                await asyncio.wait_for(self.process.wait(), grace_s)
            except TimeoutError:
                await self.kill()
        await self._close()

    async def kill(self) -> None:
        if self.alive and self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        await self._close()

    async def _close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._router.lost(WorkerDiedError("worker connection closed"))
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._closed_task is not None and self._closed_task is not asyncio.current_task():
            self._closed_task.cancel()
        if self._log_tasks:
            # let the pumps drain what the worker printed last, then stop them
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*self._log_tasks, return_exceptions=True), 1.0)
            for task in self._log_tasks:
                task.cancel()
            self._log_tasks = []


def worker_environment(threads: int) -> dict[str, str]:
    """The worker's environment: the parent's, with the thread policy applied before any import happens."""
    env = dict(os.environ)
    if threads > 0:
        for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[key] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class LocalBackend:
    """Workers as processes of this machine; torch workers forked from one shared template (``WorkerBackend``)."""

    name = "local"

    def __init__(self, config: ServerConfig) -> None:
        self._use_template = config.use_worker_template
        self._template: WorkerTemplate | None = None
        self._template_lock = asyncio.Lock()

    def cores(self) -> int:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    async def prepare(self, spec: WorkerSpec) -> None:
        """Torch workers: start the template on first need (workers start as programs when it cannot run)."""
        if spec.needs_torch:
            await self._torch_template()

    async def _torch_template(self) -> WorkerTemplate | None:
        if not self._use_template:
            return None
        async with self._template_lock:
            if self._template is None:
                self._template = WorkerTemplate()
                await self._template.start(os.environ)
            return self._template if self._template.available else None

    def create(self, spec: WorkerSpec, worker_id: str, log_prefix: str, threads: int) -> LocalWorker:
        template = self._template if spec.needs_torch and self._template is not None else None
        return LocalWorker(worker_id, log_prefix, worker_environment(threads), template)

    async def release(self, spec: WorkerSpec) -> None:
        return None  # the template is shared by every version; it goes with the server

    async def stop(self) -> None:
        if self._template is not None:
            await self._template.stop()
            self._template = None
