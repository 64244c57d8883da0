"""One worker process, seen from the parent: start, send a batch, read the reply, stop.

Workers are separate programs (``python -m modelserve.workers.main``) that inherit nothing of the parent but one end
of a unix socket pair. Their stdout and stderr are read line by line into the server log with a
``[model:version:worker]`` prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import psutil

from modelserve.errors import WorkerDiedError, WorkerLoadError, WorkerTimeoutError
from modelserve.workers.protocol import (
    LENGTH,
    InferMessage,
    InitMessage,
    LoadFailedMessage,
    Message,
    ProtocolError,
    ReadyMessage,
    ResultMessage,
    ShutdownMessage,
    decode,
    encode,
)
from modelserve.workers.template import ForkedProcess, WorkerTemplate

_LEVEL_NAMES = {name: getattr(logging, name) for name in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")}
log = logging.getLogger("modelserve.worker")


class WorkerState(enum.Enum):
    STARTING = "STARTING"
    READY = "READY"
    BUSY = "BUSY"
    STOPPED = "STOPPED"


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "no exit status"
    if returncode < 0:
        try:
            return f"killed by signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


@dataclass(eq=False)
class Dispatch:
    """One batch on its way through a worker.

    ``prune`` runs just before the batch is sent and may drop requests whose clients went away (None: nothing left,
    the batch is not sent). ``on_done`` is called exactly once: with the reply, with (None, None) when pruned to
    nothing, or with the error; ``sent`` then says whether the worker ever received it.
    """

    message: InferMessage
    timeout_s: float
    prune: Callable[[InferMessage], InferMessage | None] | None
    on_done: Callable[[Dispatch, ResultMessage | None, BaseException | None], None]
    sent: bool = False
    finished: bool = False
    timer: asyncio.TimerHandle | None = None


class _FrameReader(asyncio.Protocol):
    """Splits the worker's byte stream into frames and hands each over in the reading callback itself.

    No task waits for replies: a reply is matched and its results delivered in the same event-loop step that read
    it (a StreamReader would wake a reader task one step later).
    """

    def __init__(self, on_frame: Callable[[bytes], None], on_closed: Callable[[], None]) -> None:
        self._buffer = bytearray()
        self._on_frame = on_frame
        self._on_closed = on_closed
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports implement it without subclassing

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= LENGTH.size:
            (length,) = LENGTH.unpack_from(buffer, start)
            end = start + LENGTH.size + length
            if len(buffer) < end:
                break
            frame = bytes(buffer[start + LENGTH.size : end])
            start = end
            self._on_frame(frame)
        if start:
            del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_closed()


class WorkerProcess:
    """The parent's handle on one worker process."""

    def __init__(self, worker_id: str, log_prefix: str) -> None:
        self.worker_id = worker_id
        self.log_prefix = log_prefix
        self.state = WorkerState.STARTING
        self.start_time = time.time()
        self.process: asyncio.subprocess.Process | ForkedProcess | None = None
        self._transport: asyncio.Transport | None = None
        self._first: asyncio.Future[Message] | None = None  # the worker's first frame (ready or load failed)
        self._closing = False
        self._closed_task: asyncio.Task[None] | None = None
        self._log_tasks: list[asyncio.Task[None]] = []
        self.signature: dict[str, Any] = {}
        self._pending: deque[Dispatch] = deque()  # sent to the worker, not yet answered (at most one)
        self._armed: deque[Dispatch] = deque()  # formed, waiting for the worker to finish the current batch
        self._kill_task: asyncio.Task[None] | None = None
        self._ps: psutil.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def rss_bytes(self) -> int:
        """The worker's resident memory now (0 when it cannot be read)."""
        if self.pid is None or not self.alive:
            return 0
        try:
            if self._ps is None or self._ps.pid != self.pid:
                self._ps = psutil.Process(self.pid)
            return int(self._ps.memory_info().rss)
        except psutil.Error:
            return 0

    async def start(
        self,
        init: InitMessage,
        startup_timeout_s: float,
        env: Mapping[str, str],
        template: WorkerTemplate | None = None,
    ) -> None:
        """Start the worker (forked from the template when given) and wait until its handler initialized."""
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if template is not None and template.available:
                try:
                    self.process = await template.spawn(child_sock.fileno(), env)
                except OSError as exc:
                    log.warning("worker template failed (%s); starting %s as a separate program", exc, self.worker_id)
            if self.process is None:
                self.process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "modelserve.workers.main", "--fd", str(child_sock.fileno()),
                    pass_fds=(child_sock.fileno(),),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=dict(env),
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
        self._first = loop.create_future()
        try:
            transport, _ = await loop.create_unix_connection(
                lambda: _FrameReader(self._on_frame, self._on_closed), sock=parent_sock
            )
        except BaseException:
            parent_sock.close()
            raise
        self._transport = transport
        self._send(init)
        try:
            reply = await asyncio.wait_for(asyncio.shield(self._first), startup_timeout_s)
        except TimeoutError:
            await self.kill()
            raise WorkerLoadError(f"worker did not finish loading within {startup_timeout_s:g} s") from None
        except WorkerDiedError as exc:
            raise WorkerLoadError(f"worker exited while loading ({exc})") from None
        if isinstance(reply, LoadFailedMessage):
            await self.kill()
            raise WorkerLoadError(reply.error)
        if not isinstance(reply, ReadyMessage):
            await self.kill()
            raise WorkerLoadError(f"unexpected first reply {type(reply).__name__}")
        self.signature = reply.signature
        self.state = WorkerState.READY

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

    def _on_frame(self, frame: bytes) -> None:
        """One whole frame from the worker: its first message, or the reply to the oldest batch sent."""
        try:
            message = decode(frame[0], memoryview(frame)[1:])
        except ProtocolError as exc:
            self._broken(f"worker sent a broken frame ({exc})")
            return
        if self._first is not None and not self._first.done():
            self._first.set_result(message)
            return
        if not self._pending:
            self._broken(f"worker sent an unexpected {type(message).__name__}")
            return
        dispatch = self._pending[0]
        if (
            not isinstance(message, ResultMessage)
            or message.batch_id != dispatch.message.batch_id
            or len(message.results) != len(dispatch.message.requests)
        ):
            self._broken(f"worker answered out of protocol ({type(message).__name__})")
            return
        self._pending.popleft()
        self._dispatch_next()  # the worker gets its next batch before this one's results are delivered
        self._finish(dispatch, message, None)

    def _broken(self, reason: str) -> None:
        """The worker broke the protocol: fail what it holds and kill it."""
        self._fail_all(WorkerDiedError(reason))
        if self._kill_task is None:
            self._kill_task = asyncio.create_task(self.kill())

    def _on_closed(self) -> None:
        """The worker's end of the socket closed: fail what it held with the reason it exited."""
        if self._closing:
            return
        self._closed_task = asyncio.create_task(self._report_exit())

    async def _report_exit(self) -> None:
        error = WorkerDiedError(await self._death_reason())
        if self._first is not None and not self._first.done():
            self._first.set_exception(error)
        self._fail_all(error)

    async def _death_reason(self) -> str:
        assert self.process is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), 2.0)
        return describe_exit(self.process.returncode)

    def submit(self, dispatch: Dispatch) -> None:
        """Queue a batch: sent at once when the worker is idle, else armed until it answers the current one.

        One batch computes at a time; ``responseTimeout`` counts from when a batch is sent.
        """
        self._armed.append(dispatch)
        self.state = WorkerState.BUSY
        self._dispatch_next()

    def _dispatch_next(self) -> None:
        """Send armed batches until one is at the worker (batches whose clients all left are skipped)."""
        while not self._pending and self._armed:
            dispatch = self._armed.popleft()
            message = dispatch.prune(dispatch.message) if dispatch.prune is not None else dispatch.message
            if message is None:
                self._finish(dispatch, None, None)
                continue
            dispatch.message = message
            if self._transport is None or self._transport.is_closing():
                self._finish(dispatch, None, WorkerDiedError("worker connection closed"))
                continue
            self._transport.writelines(encode(message))
            dispatch.sent = True
            dispatch.timer = asyncio.get_running_loop().call_later(dispatch.timeout_s, self._timed_out, dispatch)
            self._pending.append(dispatch)

    def _finish(self, dispatch: Dispatch, reply: ResultMessage | None, error: BaseException | None) -> None:
        if dispatch.finished:
            return
        dispatch.finished = True
        if dispatch.timer is not None:
            dispatch.timer.cancel()
        if not self._pending and not self._armed and self.state is WorkerState.BUSY:
            self.state = WorkerState.READY
        dispatch.on_done(dispatch, reply, error)

    def _timed_out(self, dispatch: Dispatch) -> None:
        """The handler is past responseTimeout: its batch fails with 504 and the worker is killed."""
        timeout = WorkerTimeoutError(f"handler did not answer within responseTimeout ({dispatch.timeout_s:g} s)")
        self._finish(dispatch, None, timeout)
        if self._kill_task is None:
            self._kill_task = asyncio.create_task(self.kill())

    def _fail_all(self, error: WorkerDiedError) -> None:
        batches = [*self._pending, *self._armed]
        self._pending.clear()
        self._armed.clear()
        for dispatch in batches:
            self._finish(dispatch, None, error)

    async def wait_exit(self) -> int:
        assert self.process is not None
        return await self.process.wait()

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
        self.state = WorkerState.STOPPED
        if self._closing:
            return
        self._closing = True
        closed = WorkerDiedError("worker connection closed")
        if self._first is not None and not self._first.done():
            self._first.set_exception(closed)
            self._first.exception()
        self._fail_all(closed)
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
