"""One worker as the pool sees it, whatever backend runs it: batches in order, one at the worker at a time.

A ``WorkerChannel`` wraps a backend's ``WorkerHandle``. It sends a batch at once when the worker is idle and arms the
next behind it (sent the moment the current one is answered, in the same event-loop step), prunes requests whose
clients left before a batch is sent, times each batch from when it was sent (``responseTimeout``: 504, and the worker
is killed), matches each reply to its batch, and fails every batch it holds when the worker is lost. Nothing here
knows processes, sockets or clusters.

Streams: a request answered by a stream is delivered (``Dispatch.on_stream``) with its stream's first frame, and
its pieces are put on a :class:`~modelserve.batching.stream.PieceStream` as they come. The worker may send
``STREAM_WINDOW`` pieces ahead of what the reader took; the stream grants more (a credit frame) as the reader takes
them. A batch stays at the worker (nothing else is sent to it, ``Dispatch.held``) until its streams have ended, even
after its reply delivered the plain results. ``responseTimeout`` is then an idle limit: the time allowed between two
frames of the worker (the timer restarts at each, and at each credit sent); a worker that waits for credit from a
slow reader is not timed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelserve.batching.stream import PieceStream
from modelserve.batching.types import InferResult
from modelserve.errors import WorkerDiedError, WorkerTimeoutError
from modelserve.protocols.codec import error_result
from modelserve.workers.backend import WorkerHandle, WorkerUsage
from modelserve.workers.protocol import (
    STREAM_WINDOW,
    CancelMessage,
    CreditMessage,
    InferMessage,
    InitMessage,
    ResultMessage,
    StreamEndMessage,
    StreamHead,
    StreamPieceMessage,
)

log = logging.getLogger("modelserve.worker")

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
    # delivers request ``index``'s streamed answer; False when its client has gone (the stream is cancelled then)
    on_stream: Callable[[Dispatch, int, InferResult], bool] | None = None
    # called once the worker holds nothing more of the batch, when it was still streaming at ``on_done``; with the
    # error when its streams ended because the worker was lost or timed out
    on_released: Callable[[BaseException | None], None] | None = None
    sent: bool = False
    finished: bool = False
    replied: bool = False
    timer: Any = None
    streams: dict[int, PieceStream] | None = None  # streams delivered and not ended, by request position
    streaming: set[int] | None = None  # positions whose stream the worker has not ended yet

    @property
    def held(self) -> bool:
        """The worker still holds part of this batch: its reply has not come, or its streams have not ended."""
        return not self.replied or bool(self.streaming)


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
            self._arm_timer(dispatch)
            self._pending.append(dispatch)

    def _arm_timer(self, dispatch: Dispatch) -> None:
        if dispatch.timer is not None:
            dispatch.timer.cancel()
        schedule = self._schedule or asyncio.get_running_loop().call_later
        dispatch.timer = schedule(dispatch.timeout_s, functools.partial(self._timed_out, dispatch))

    def _finish(self, dispatch: Dispatch, reply: ResultMessage | None, error: BaseException | None) -> None:
        if dispatch.finished:
            return
        dispatch.finished = True
        if dispatch.timer is not None and not (error is None and dispatch.streaming):
            dispatch.timer.cancel()
        if not self._pending and not self._armed and self.state is WorkerState.BUSY:
            self.state = WorkerState.READY
        dispatch.on_done(dispatch, reply, error)

    def _timed_out(self, dispatch: Dispatch) -> None:
        """The handler is past responseTimeout: its batch fails with 504 and the worker is killed.

        While the batch streams, the limit is on the silence between the worker's frames; a worker whose every open
        stream waits for its reader to take pieces is not at fault, and its timer starts again. A reader that took
        nothing for the whole limit has stalled (its client neither reads nor leaves): its stream is abandoned, which
        cancels it in the worker, so the worker is free again once it has ended the stream.
        """
        dispatch.timer = None
        streams = dispatch.streams or {}
        if (
            dispatch.replied
            and dispatch.streaming
            and all(index in streams and streams[index].blocked for index in dispatch.streaming)
            and not all(streams[index].cancelled for index in dispatch.streaming)
        ):
            now = time.monotonic()
            for index in dispatch.streaming:
                stream = streams[index]
                if not stream.cancelled and now - stream.read_at >= dispatch.timeout_s:
                    log.warning("a reader took no streamed piece for responseTimeout (%g s): stream cancelled",
                                dispatch.timeout_s)  # fmt: skip
                    stream.abandon()
            self._arm_timer(dispatch)
            return
        message = f"handler did not answer within responseTimeout ({dispatch.timeout_s:g} s)"
        timeout = WorkerTimeoutError(message)
        self._end_streams(dispatch, error_result(504, message), timeout)
        self._finish(dispatch, None, timeout)  # it stays pending: nothing more is sent to a worker about to go
        self._kill_soon()

    # ---- streams ------------------------------------------------------------------------------------------------
    def on_stream(self, message: StreamPieceMessage | StreamEndMessage) -> None:
        """A stream frame: a piece, or the end, of the streamed answer to one request of the batch at the worker."""
        dispatch = self._pending[0] if self._pending else None
        if (
            dispatch is None
            or message.batch_id != dispatch.message.batch_id
            or message.index >= len(dispatch.message.requests)
        ):
            self._broken(f"worker sent a {type(message).__name__} that matches no batch sent")
            return
        if dispatch.finished and dispatch.timer is None:
            return  # timed out: the worker is being killed
        if dispatch.streaming is None:
            dispatch.streaming, dispatch.streams = set(), {}
        assert dispatch.streams is not None
        index = message.index
        if dispatch.replied and index not in dispatch.streaming:
            self._broken("worker sent a stream frame for a request it did not stream")
            return
        dispatch.streaming.add(index)
        self._arm_timer(dispatch)
        stream = dispatch.streams.get(index)
        if isinstance(message, StreamPieceMessage):
            if stream is None:
                stream = self._open(dispatch, index, message)
            stream.put(InferResult(200, "", message.headers, message.body))
            return
        # the end of the stream: the worker holds nothing more of it
        dispatch.streaming.discard(index)
        if stream is not None:
            del dispatch.streams[index]
            stream.end(error_result(message.status, message.error) if message.error else None)
        elif dispatch.on_stream is not None:  # it ended before its first piece: a plain answer
            if message.error:
                result = error_result(message.status, message.error)
            else:
                head = message.head or StreamHead(200, "application/octet-stream")
                result = InferResult(head.status, head.content_type, dict(head.headers))
            dispatch.on_stream(dispatch, index, result)
        if dispatch.replied and not dispatch.streaming:
            self._released(dispatch)

    def _open(self, dispatch: Dispatch, index: int, first: StreamPieceMessage) -> PieceStream:
        batch_id = dispatch.message.batch_id

        def grant(count: int) -> None:
            if index in (dispatch.streaming or ()) and self._lost is None:
                with contextlib.suppress(WorkerDiedError):
                    self.handle.send_control(CreditMessage(batch_id, index, count))
                if dispatch.timer is not None:
                    self._arm_timer(dispatch)

        def cancel() -> None:
            if index in (dispatch.streaming or ()) and self._lost is None:
                with contextlib.suppress(WorkerDiedError):
                    self.handle.send_control(CancelMessage(batch_id, index))

        stream = PieceStream(STREAM_WINDOW, grant, cancel)
        assert dispatch.streams is not None
        dispatch.streams[index] = stream
        head = first.head
        result = (
            InferResult(head.status, head.content_type, dict(head.headers), stream=stream)
            if head is not None
            else InferResult(200, "application/octet-stream", stream=stream)
        )
        if dispatch.on_stream is None or not dispatch.on_stream(dispatch, index, result):
            stream.cancel()  # nobody reads it: its client left before the first piece
        return stream

    def abort_streams(self, message: str) -> None:
        """End every open stream now with a 503 ``message`` and tell the worker to stop them (the server stops and
        its drain time is over: a reader that stopped reading must not hold the worker for ever)."""
        for dispatch in self._pending:
            for index, stream in list((dispatch.streams or {}).items()):
                stream.end(error_result(503, message))
                if self._lost is None:
                    with contextlib.suppress(WorkerDiedError):
                        self.handle.send_control(CancelMessage(dispatch.message.batch_id, index))

    def _end_streams(self, dispatch: Dispatch, error: InferResult, cause: BaseException) -> None:
        """End every stream of ``dispatch`` with ``error`` (the worker is lost or timed out: ``cause``); a streamed
        request whose first piece never came is answered with ``error`` itself."""
        streams = dispatch.streams or {}
        for index in sorted(dispatch.streaming or ()):
            stream = streams.get(index)
            if stream is not None:
                stream.end(error)
            elif dispatch.replied and dispatch.on_stream is not None:
                dispatch.on_stream(dispatch, index, error)
        streams.clear()
        was_held = dispatch.replied and bool(dispatch.streaming)
        if dispatch.streaming:
            dispatch.streaming.clear()
        if was_held:
            self._released(dispatch, cause)

    def _released(self, dispatch: Dispatch, cause: BaseException | None = None) -> None:
        """The worker is done with a replied batch whose streams have all ended: it can take the next batch.

        With a ``cause`` (the worker is lost or being killed) the batch stays pending, so nothing more is sent to it.
        """
        if dispatch.timer is not None:
            dispatch.timer.cancel()
            dispatch.timer = None
        if cause is None:
            if dispatch in self._pending:
                self._pending.remove(dispatch)
            self._send_next()
            if not self._pending and not self._armed and self.state is WorkerState.BUSY:
                self.state = WorkerState.READY
        released, dispatch.on_released = dispatch.on_released, None
        if released is not None:
            released(cause)

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
        dispatch.replied = True
        if message.streamed:
            if dispatch.streaming is None:
                dispatch.streaming, dispatch.streams = set(), {}
            dispatch.streaming.update(i for i in message.streamed if i < len(dispatch.message.requests))
        if dispatch.streaming:
            # the worker streams on: the batch stays at it, its plain results are delivered now
            self._arm_timer(dispatch)
            self._finish(dispatch, message, None)
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
            if dispatch.message.batch_id in error.unstarted and not dispatch.replied:
                dispatch.sent = False  # its transport refused it before the worker got it: it may run elsewhere
            self._end_streams(dispatch, error_result(500, f"the stream broke off: {error}"), error)
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
