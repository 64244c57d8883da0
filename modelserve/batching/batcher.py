"""The per-version request queue and dynamic batcher.

The pool asks ``take`` for a batch whenever one of its workers can accept one: when a job arrives, when a worker
answers, when a batch's delay runs out. ``take`` returns up to ``batch_size`` jobs, or nothing yet when the batch should
wait for company: a partial batch waits at most ``max_batch_delay`` after its first job *arrived*, and only while
another batch of the version is being computed (``busy``). Jobs that queued while every worker was busy have already
used their delay, so a batch forms at once from what is waiting; a lone request on an idle version goes at once.

This is the hot path: nothing here awaits. The pool is told of new jobs through ``on_job`` and acts in the same call.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from modelserve.batching.types import InferRequest, InferResult
from modelserve.errors import ServiceUnavailableError


@dataclass(eq=False)
class Job:
    """One request waiting for its result. The HTTP side awaits ``future``; cancelling it abandons the job."""

    request: InferRequest
    future: asyncio.Future[InferResult]
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float = 0.0
    requeued: int = 0  # times it went back to the queue after a worker's transport refused its batch

    @property
    def abandoned(self) -> bool:
        return self.future.done()


def _nothing() -> None:
    return None


class Batcher:
    """A bounded FIFO of jobs that hands out batches."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._jobs: deque[Job] = deque()
        self.closed = False
        self.on_job: Callable[[], None] = _nothing  # called after a job was queued (or put back)

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
        self.on_job()

    def push_front(self, jobs: list[Job]) -> None:
        """Put jobs back at the head of the queue, in order (their worker went away before running them)."""
        live = [job for job in jobs if not job.abandoned]
        if live:
            self._jobs.extendleft(reversed(live))
            self.on_job()

    def _drop_abandoned(self) -> None:
        live = [job for job in self._jobs if not job.abandoned]
        if len(live) != len(self._jobs):
            self._jobs = deque(live)

    def _first_live(self) -> Job | None:
        jobs = self._jobs
        while jobs:
            if not jobs[0].abandoned:
                return jobs[0]
            jobs.popleft()
        return None

    def deadline(self, max_batch_delay_s: float) -> float | None:
        """When the batch at the head of the queue stops waiting for company (None: the queue is empty)."""
        first = self._first_live()
        return None if first is None else first.enqueued_at + max_batch_delay_s

    def take(self, batch_size: int, max_batch_delay_s: float, busy: bool, now: float | None = None) -> list[Job]:
        """Up to ``batch_size`` live jobs, or [] when the queue is empty or the batch should wait for company."""
        first = self._first_live()
        if first is None:
            return []
        if batch_size > 1 and busy:
            live = sum(1 for job in itertools.islice(self._jobs, batch_size * 2) if not job.abandoned)
            if live < batch_size and (time.monotonic() if now is None else now) < first.enqueued_at + max_batch_delay_s:
                return []
        batch: list[Job] = []
        jobs = self._jobs
        while jobs and len(batch) < batch_size:
            job = jobs.popleft()
            if not job.abandoned:
                batch.append(job)
        return batch

    def fail_all(self, error: BaseException) -> None:
        """Fail every queued job (the version failed or is gone)."""
        while self._jobs:
            job = self._jobs.popleft()
            if not job.abandoned:
                job.future.set_exception(error)
