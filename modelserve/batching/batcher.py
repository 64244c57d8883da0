"""The per-version request queue and dynamic batcher.

Each worker's feeder calls ``next_batch``: it waits for a first job, then takes up to ``batch_size`` jobs, waiting at
most ``max_batch_delay`` after the first job *arrived*. Jobs that queued while every worker was busy have already used
their delay, so a batch forms at once from what is waiting: batches form while workers are busy. When nothing else of
the version is in flight (``busy`` says no), there is no load to batch with and waiting would only add latency, so a
lone request goes at once.

This is the hot path: waiting uses bare futures and one timer handle, never a task per wait.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from modelserve.errors import ServiceUnavailableError
from modelserve.workers.protocol import InferRequest, InferResult


@dataclass(eq=False)
class Job:
    """One request waiting for its result. The HTTP side awaits ``future``; cancelling it abandons the job."""

    request: InferRequest
    future: asyncio.Future[InferResult]
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float = 0.0

    @property
    def abandoned(self) -> bool:
        return self.future.done()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Batcher:
    """A bounded FIFO of jobs that hands out batches."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._jobs: deque[Job] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self.closed = False

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def remaining_capacity(self) -> int:
        return max(self.capacity - len(self._jobs), 0)

    def submit(self, job: Job) -> None:
        """Queue ``job`` or raise ServiceUnavailableError when the queue is full."""
        if self.closed:
            raise ServiceUnavailableError("model version is shutting down")
        if len(self._jobs) >= self.capacity:
            self._drop_abandoned()
            if len(self._jobs) >= self.capacity:
                raise ServiceUnavailableError(f"request queue is full ({self.capacity} waiting); retry later")
        self._jobs.append(job)
        self._notify()

    def push_front(self, job: Job) -> None:
        """Put a job back at the head of the queue (its worker went away before running it)."""
        if not job.abandoned:
            self._jobs.appendleft(job)
            self._notify()

    def _notify(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _drop_abandoned(self) -> None:
        live = [job for job in self._jobs if not job.abandoned]
        if len(live) != len(self._jobs):
            self._jobs = deque(live)

    def _pop_live(self) -> Job | None:
        while self._jobs:
            job = self._jobs.popleft()
            if not job.abandoned:
                return job
        return None

    async def _wait(self, timeout_s: float | None) -> None:
        """Wait until a job may have arrived (or the timeout passed)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(timeout_s, _wake, waiter) if timeout_s is not None else None
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._notify()  # we were woken but will not take the job: pass the wake-up on
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if not waiter.done():
                waiter.cancel()

    async def next_batch(
        self, batch_size: int, max_batch_delay_s: float, busy: Callable[[], bool] | None = None
    ) -> list[Job]:
        """Wait for at least one live job and return up to ``batch_size`` of them."""
        first = self._pop_live()
        while first is None:
            await self._wait(None)
            first = self._pop_live()
        batch = [first]
        deadline = first.enqueued_at + max_batch_delay_s
        try:
            while len(batch) < batch_size:
                job = self._pop_live()
                if job is not None:
                    batch.append(job)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (busy is not None and not busy()):
                    break
                await self._wait(remaining)
        except asyncio.CancelledError:
            # the feeder stopped while collecting: nothing taken may be lost
            for job in reversed(batch):
                self.push_front(job)
            raise
        if self._jobs:
            self._notify()  # wake another idle feeder for what is left
        return batch

    def fail_all(self, error: BaseException) -> None:
        """Fail every queued job (the version failed or is gone)."""
        while self._jobs:
            job = self._jobs.popleft()
            if not job.abandoned:
                job.future.set_exception(error)
