"""One worker as the pool sees it, whatever backend runs it: batches in order, one at the worker at a time.

A ``WorkerChannel`` wraps a backend's ``WorkerHandle``. It sends a batch at once when the worker is idle and arms the
next behind it (sent the moment the current one is answered, in the same event-loop step), prunes requests whose
clients left before a batch is sent, times each batch from when it was sent (``responseTimeout``: 504, and the worker
is killed), matches each reply to its batch, and fails every batch it holds when the worker is lost. Nothing here
knows processes, sockets or clusters.
"""

from __future__ import annotations

import asyncio
import enum
import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelserve.errors import WorkerDiedError, WorkerTimeoutError
from modelserve.workers.backend import WorkerHandle, WorkerUsage
from modelserve.workers.protocol import InferMessage, InitMessage, ResultMessage

# schedules ``callback`` after ``delay`` seconds and returns something with ``cancel()`` (the loop's call_later)
Scheduler = Callable[[float, Callable[[], None]], asyncio.TimerHandle | Any]


class WorkerState(enum.Enum):
    STARTING = "STARTING"
    READY = "READY"
    BUSY = "BUSY"
    STOPPED = "STOPPED"


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
    timer: Any = None


class WorkerChannel:
    """The pool's side of one worker: its state, the batch it computes and the one armed behind it."""

    def __init__(self, handle: WorkerHandle, schedule: Scheduler | None = None) -> None:
        self.handle = handle
        self.state = WorkerState.STARTING
        self._schedule = schedule
        self._pending: deque[Dispatch] = deque()  # sent to the worker, not yet answered (at most one)
        self._armed: deque[Dispatch] = deque()  # formed, waiting for the worker to finish the current batch
        self._lost: WorkerDiedError | None = None
        self._kill_task: asyncio.Task[None] | None = None

    @property
    def worker_id(self) -> str:
        return self.handle.worker_id

    @property
    def alive(self) -> bool:
        return self.handle.alive and self.state is not WorkerState.STOPPED

    @property
    def signature(self) -> dict[str, Any]:
        return self.handle.signature

    @property
    def declared_batch_size(self) -> int:
        return self.handle.batch_size

    def usage(self) -> WorkerUsage:
        return self.handle.usage()

    async def start(self, init: InitMessage, startup_timeout_s: float) -> None:
        """Start the worker; raise WorkerLoadError when it does not become ready."""
        await self.handle.start(init, startup_timeout_s, self)
        if self._lost is None:
            self.state = WorkerState.READY

    # ---- batches ----------------------------------------------------------------------------------------------
    def submit(self, dispatch: Dispatch) -> None:
        """Queue a batch: sent at once when the worker is idle, else armed until it answers the current one."""
        self._armed.append(dispatch)
        self.state = WorkerState.BUSY
        self._send_next()

    def _send_next(self) -> None:
        """Send armed batches until one is at the worker (batches whose clients all left are skipped)."""
        while not self._pending and self._armed:
            dispatch = self._armed.popleft()
            message = dispatch.prune(dispatch.message) if dispatch.prune is not None else dispatch.message
            if message is None:
                self._finish(dispatch, None, None)
                continue
            dispatch.message = message
            if self._lost is not None:
                self._finish(dispatch, None, self._lost)
                continue
            try:
                self.handle.send(message)
            except WorkerDiedError as exc:
                self._finish(dispatch, None, exc)
                continue
            dispatch.sent = True
            schedule = self._schedule or asyncio.get_running_loop().call_later
            dispatch.timer = schedule(dispatch.timeout_s, functools.partial(self._timed_out, dispatch))
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
        self._finish(dispatch, None, timeout)  # it stays pending: nothing more is sent to a worker about to go
        self._kill_soon()

    # ---- what the handle reports (WorkerEvents) -------------------------------------------------------------------
    def on_reply(self, message: ResultMessage) -> None:
        """A reply: it answers the oldest batch sent, or the worker broke protocol and goes."""
        if not self._pending:
            self._broken(f"worker sent an unexpected {type(message).__name__}")
            return
        dispatch = self._pending[0]
        if message.batch_id != dispatch.message.batch_id or len(message.results) != len(dispatch.message.requests):
            self._broken("worker answered out of protocol (a reply that matches no batch sent)")
            return
        self._pending.popleft()
        self._send_next()  # the worker gets its next batch before this one's results are delivered
        self._finish(dispatch, message, None)

    def on_lost(self, error: WorkerDiedError) -> None:
        """The worker is gone: every batch it held or would have received fails with ``error``."""
        if self._lost is None:
            self._lost = error
        self._fail_all(self._lost)

    def _broken(self, reason: str) -> None:
        self.on_lost(WorkerDiedError(reason))
        self._kill_soon()

    def _kill_soon(self) -> None:
        if self._kill_task is None:
            self._kill_task = asyncio.ensure_future(self.kill())

    def _fail_all(self, error: WorkerDiedError) -> None:
        batches = [*self._pending, *self._armed]
        self._pending.clear()
        self._armed.clear()
        for dispatch in batches:
            self._finish(dispatch, None, error)

    # ---- ending -----------------------------------------------------------------------------------------------
    async def wait_exit(self) -> str:
        return await self.handle.wait_exit()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Let the worker finish and exit (killed after ``grace_s``); whatever it still held fails."""
        await self.handle.stop(grace_s)
        self._closed()

    async def kill(self) -> None:
        await self.handle.kill()
        self._closed()

    def _closed(self) -> None:
        self.state = WorkerState.STOPPED
        self.on_lost(WorkerDiedError("worker connection closed"))
