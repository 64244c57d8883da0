"""A worker backend with no processes, for unit tests of the channel, the pool and the registry.

``FakeHandle`` records what it was sent; the test answers (``reply``), makes it die (``die``) or fail to load
(``FakeBackend.load_errors``). ``FakeScheduler`` holds per-batch timeout timers until the test fires them, so a
timeout is tested without waiting for one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from modelserve.batching.types import InferResult
from modelserve.errors import WorkerDiedError, WorkerLoadError
from modelserve.workers.backend import WorkerEvents, WorkerSpec, WorkerUsage
from modelserve.workers.protocol import CancelMessage, CreditMessage, InferMessage, InitMessage, ResultMessage


class FakeHandle:
    """A worker that answers only when the test says so (a ``WorkerHandle``)."""

    def __init__(self, worker_id: str, load_error: str | None = None, memory_bytes: int = 0) -> None:
        self.worker_id = worker_id
        self.start_time = 0.0
        self.signature: dict[str, Any] = {"inputs": [], "outputs": []}
        self.batch_size = 0
        self.sent: list[InferMessage] = []
        self.controls: list[CreditMessage | CancelMessage] = []  # stream credit and cancel frames, in order
        self.answered = 0  # batches of ``sent`` replied to so far
        self.init: InitMessage | None = None
        self.memory_bytes = memory_bytes
        self.killed = False
        self.stopped = False
        self._load_error = load_error
        self._events: WorkerEvents | None = None
        self._exit: asyncio.Future[str] | None = None

    @property
    def alive(self) -> bool:
        return self._exit is not None and not self._exit.done()

    async def start(self, init: InitMessage, startup_timeout_s: float, events: WorkerEvents) -> None:
        self.init = init
        self._exit = asyncio.get_running_loop().create_future()
        if self._load_error is not None:
            self._exit.set_result("exit code 1")
            raise WorkerLoadError(self._load_error)
        self._events = events

    def send(self, message: InferMessage) -> None:
        if not self.alive:
            raise WorkerDiedError("worker connection closed")
        self.sent.append(message)

    def send_control(self, message: CreditMessage | CancelMessage) -> None:
        if not self.alive:
            raise WorkerDiedError("worker connection closed")
        self.controls.append(message)

    def reply(self, index: int = 0, status: int = 200, body: bytes = b"ok") -> None:
        """Answer the ``index``-th batch sent, one result per request."""
        self.answered = max(self.answered, index + 1)
        message = self.sent[index]
        results = [InferResult(status, "text/plain", {}, body + b":" + r.body) for r in message.requests]
        assert self._events is not None
        self._events.on_reply(ResultMessage(batch_id=message.batch_id, results=results))

    def reply_all(self) -> int:
        """Answer every batch sent and not answered yet (replies may send more); return how many."""
        count = 0
        while self.alive and self.answered < len(self.sent):
            self.reply(self.answered)
            count += 1
        return count

    def die(self, reason: str = "killed by signal SIGKILL", unstarted: frozenset[int] = frozenset()) -> None:
        """The worker exits on its own: what it held is lost with ``reason``; batches named in ``unstarted`` are
        known never to have reached it (a cluster call refused before it ran)."""
        assert self._exit is not None and self._events is not None
        if not self._exit.done():
            self._exit.set_result(f"worker exited ({reason})")
        self._events.on_lost(WorkerDiedError(reason, unstarted))

    async def wait_exit(self) -> str:
        assert self._exit is not None
        return await asyncio.shield(self._exit)

    async def stop(self, grace_s: float = 5.0) -> None:
        self.stopped = True
        self._end("exit code 0")

    async def kill(self) -> None:
        self.killed = True
        self._end("killed by signal SIGKILL")

    def _end(self, reason: str) -> None:
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(f"worker exited ({reason})")

    def usage(self) -> WorkerUsage:
        return WorkerUsage(memory_bytes=self.memory_bytes, pid=None, node="fake-node")


@dataclass
class FakeBackend:
    """Hands out FakeHandles; ``load_errors`` makes the next starts fail, one error each."""

    name: str = "fake"
    load_errors: list[str] = field(default_factory=list)
    memory_bytes: int = 0
    handles: list[FakeHandle] = field(default_factory=list)
    prepared: list[WorkerSpec] = field(default_factory=list)
    released: list[WorkerSpec] = field(default_factory=list)
    stopped: bool = False

    def cores(self) -> int:
        return 8

    async def prepare(self, spec: WorkerSpec) -> None:
        self.prepared.append(spec)

    def create(self, spec: WorkerSpec, worker_id: str, log_prefix: str, threads: int) -> FakeHandle:
        error = self.load_errors.pop(0) if self.load_errors else None
        handle = FakeHandle(worker_id, error, self.memory_bytes)
        self.handles.append(handle)
        return handle

    async def release(self, spec: WorkerSpec) -> None:
        self.released.append(spec)

    async def stop(self) -> None:
        self.stopped = True

    def live(self) -> list[FakeHandle]:
        return [h for h in self.handles if h.alive]


class FakeScheduler:
    """Timers that fire only when the test calls ``fire`` (the channel's per-batch timeouts)."""

    @dataclass
    class Timer:
        delay: float
        callback: Callable[[], None]
        cancelled: bool = False

        def cancel(self) -> None:
            self.cancelled = True

    def __init__(self) -> None:
        self.timers: list[FakeScheduler.Timer] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> FakeScheduler.Timer:
        timer = FakeScheduler.Timer(delay, callback)
        self.timers.append(timer)
        return timer

    def armed(self) -> list[FakeScheduler.Timer]:
        return [t for t in self.timers if not t.cancelled]

    def fire(self) -> int:
        """Run every timer not cancelled; return how many ran."""
        due = self.armed()
        for timer in due:
            timer.cancelled = True
            timer.callback()
        return len(due)


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Let the event loop run until ``condition`` holds; fail after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)
