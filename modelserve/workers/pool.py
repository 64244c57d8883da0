"""A supervised pool of worker processes for one model version, fed by the version's batcher.

Each slot runs one worker at a time and a feeder loop: take a batch, send it, deliver the results. A worker that dies
fails its batch at once (500 naming the exit) and is replaced with Fibonacci back-off; a handler past responseTimeout
gets 504 and its worker is replaced; when every load attempt keeps failing, the pool reports FAILED.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelserve.batching.batcher import Batcher, Job
from modelserve.errors import ModelLoadError, WorkerDiedError, WorkerLoadError, WorkerTimeoutError
from modelserve.stats import VersionStats
from modelserve.workers.process import WorkerProcess, describe_exit, worker_environment
from modelserve.workers.protocol import InferMessage, InitMessage, ResultMessage
from modelserve.workers.template import WorkerTemplate

log = logging.getLogger("modelserve.pool")

# batches outstanding at one worker: the next waits in its socket while the current one computes
PIPELINE_DEPTH = 2
BACKOFF_S = (0.1, 0.1, 0.2, 0.3, 0.5, 0.8, 1.3, 2.1, 3.4, 5.5)
_batch_ids = itertools.count(1)


def backoff_delay(failures: int) -> float:
    """Fibonacci-like back-off, capped."""
    return BACKOFF_S[min(max(failures - 1, 0), len(BACKOFF_S) - 1)]


@dataclass
class PoolSettings:
    batch_size: int
    max_batch_delay_s: float
    response_timeout_s: float
    startup_timeout_s: float
    max_load_failures: int


class _Slot:
    """One position in the pool: keeps a worker alive and feeds it batches."""

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.worker: WorkerProcess | None = None
        self.stopping = False
        self.running: set[asyncio.Task[None]] = set()
        self.task = asyncio.create_task(self._run(), name=f"slot-{pool.label}-{index}")

    async def _run(self) -> None:
        deaths = 0
        while not self.stopping:
            worker = await self._start_worker()
            if worker is None:
                return
            self.worker = worker
            started = time.monotonic()
            try:
                await self._feed(worker)
            except WorkerDiedError as exc:
                log.warning("worker %s died: %s", worker.worker_id, exc)
            finally:
                await worker.kill()
            if self.stopping:
                return
            self.pool.stats.worker_restarts += 1
            # a worker that lived a while earns a fresh back-off
            deaths = 1 if time.monotonic() - started > 30 else deaths + 1
            await asyncio.sleep(backoff_delay(deaths))

    async def _start_worker(self) -> WorkerProcess | None:
        pool = self.pool
        while not self.stopping:
            worker = WorkerProcess(f"{pool.label}-{next(pool.worker_ids)}", f"{pool.label}:{self.index}")
            self.worker = worker
            try:
                await worker.start(
                    pool.make_init(worker.worker_id), pool.settings.startup_timeout_s, pool.make_env(), pool.template
                )
            except WorkerLoadError as exc:
                await worker.kill()
                failures = pool.load_failed(str(exc))
                if pool.failed:
                    return None
                await asyncio.sleep(backoff_delay(failures))
                continue
            except asyncio.CancelledError:
                await worker.kill()
                raise
            pool.load_succeeded()
            if worker.signature:
                pool.signature = worker.signature
            return worker
        return None

    async def _feed(self, worker: WorkerProcess) -> None:
        """Keep up to PIPELINE_DEPTH batches at the worker: it finds the next one waiting when it finishes one."""
        pool = self.pool
        exit_watch = asyncio.ensure_future(worker.wait_exit())
        collecting: asyncio.Future[list[Job]] | None = None
        try:
            while not self.stopping:
                if collecting is None and len(self.running) < PIPELINE_DEPTH:
                    collecting = asyncio.ensure_future(
                        pool.batcher.next_batch(pool.settings.batch_size, pool.settings.max_batch_delay_s, pool.busy)
                    )
                waitables: set[asyncio.Future[Any]] = {exit_watch, *self.running}
                if collecting is not None:
                    waitables.add(collecting)
                await asyncio.wait(waitables, return_when=asyncio.FIRST_COMPLETED)
                for task in [t for t in self.running if t.done()]:
                    self.running.discard(task)
                    task.result()  # a dead worker raises WorkerDiedError here
                if exit_watch.done():
                    raise WorkerDiedError(f"worker exited ({describe_exit(exit_watch.result())})")
                if collecting is not None and collecting.done():
                    jobs, collecting = collecting.result(), None
                    self.running.add(asyncio.create_task(self._run_batch(worker, jobs)))
        finally:
            exit_watch.cancel()
            if collecting is not None:
                if collecting.done() and not collecting.cancelled():
                    pool.requeue(collecting.result())
                else:
                    collecting.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await collecting
            if self.running:
                # batches already at the worker finish (or fail with it) before the worker goes
                await asyncio.gather(*self.running, return_exceptions=True)
                self.running.clear()

    async def _run_batch(self, worker: WorkerProcess, jobs: list[Job]) -> None:
        pool = self.pool
        live = [job for job in jobs if not job.abandoned]
        if not live:
            return
        now = time.monotonic()
        for job in live:
            job.started_at = now
        message = InferMessage(batch_id=next(_batch_ids), requests=[job.request for job in live])

        def prune(sent: InferMessage) -> InferMessage | None:
            # clients that left while this batch waited for the worker are dropped before it is sent
            kept = [job for job in live if not job.abandoned]
            if len(kept) == len(live):
                return sent
            live[:] = kept
            return InferMessage(batch_id=sent.batch_id, requests=[job.request for job in kept]) if kept else None

        counted = len(live)
        pool.in_flight += counted
        try:
            reply = await worker.infer(message, pool.settings.response_timeout_s, prune)
        except (WorkerDiedError, WorkerTimeoutError) as exc:
            if isinstance(exc, WorkerDiedError):
                exc = WorkerDiedError(f"worker {worker.worker_id} died while handling the request ({exc})")
            for job in live:
                if not job.future.done():
                    job.future.set_exception(exc)
            raise WorkerDiedError(str(exc)) from exc
        finally:
            pool.in_flight -= counted
            pool.idle.set()
        if reply is None:
            return
        for job, result in zip(live, reply.results, strict=True):
            if not job.future.done():
                job.future.set_result(result)
        # recorded after the waiting requests have been woken: their responses go out first (the callbacks run in
        # order, so the figures are in place before the server reads anything new, a /metrics scrape included)
        asyncio.get_running_loop().call_soon(
            self._record, len(live), [job.started_at - job.enqueued_at for job in live], reply
        )

    def _record(self, size: int, queue_waits: list[float], reply: ResultMessage) -> None:
        self.pool.stats.record_batch(size, queue_waits, reply.timings)
        if reply.metrics:
            self.pool.stats.record_handler_metrics(reply.metrics)

    async def stop(self) -> None:
        self.stopping = True
        if not self.running:
            self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        if self.worker is not None:
            await self.worker.stop()


class WorkerPool:
    """The workers of one model version."""

    def __init__(
        self,
        label: str,
        batcher: Batcher,
        settings: PoolSettings,
        stats: VersionStats,
        make_init: Callable[[str], InitMessage],
        thread_count: Callable[[], int],
        template: WorkerTemplate | None = None,
    ) -> None:
        self.label = label
        self.batcher = batcher
        self.settings = settings
        self.stats = stats
        self.make_init = make_init
        self.thread_count = thread_count
        self.template = template
        self.slots: list[_Slot] = []
        self.worker_ids = itertools.count(1)
        self.failed = False
        self.last_error = ""
        self.consecutive_load_failures = 0
        self.in_flight = 0
        self.idle = asyncio.Event()
        self._changed = asyncio.Event()
        self.signature: dict[str, Any] = {}

    def busy(self) -> bool:
        """Whether another batch of this version is being computed (then waiting for companions pays off)."""
        return self.in_flight > 0

    def make_env(self) -> dict[str, str]:
        return worker_environment(self.thread_count())

    @property
    def target(self) -> int:
        return len([s for s in self.slots if not s.stopping])

    def workers(self) -> list[WorkerProcess]:
        return [s.worker for s in self.slots if s.worker is not None and not s.stopping]

    def ready_count(self) -> int:
        return sum(1 for w in self.workers() if w.alive and w.state.value in ("READY", "BUSY"))

    def load_failed(self, error: str) -> int:
        self.last_error = error
        self.consecutive_load_failures += 1
        log.error("%s: worker failed to load: %s", self.label, error)
        if self.consecutive_load_failures >= self.settings.max_load_failures and self.ready_count() == 0:
            self.failed = True
            for slot in self.slots:
                slot.stopping = True
            self.batcher.fail_all(ModelLoadError(f"model failed to load: {error}"))
        self._changed.set()
        return self.consecutive_load_failures

    def load_succeeded(self) -> None:
        self.consecutive_load_failures = 0
        self._changed.set()

    def requeue(self, jobs: list[Job]) -> None:
        for job in reversed(jobs):
            if not job.abandoned:
                self.batcher.push_front(job)

    async def scale(self, count: int) -> None:
        """Grow or shrink to ``count`` workers; workers that go finish their batch first."""
        live = [s for s in self.slots if not s.stopping]
        if count > len(live):
            self.failed = False
            self.consecutive_load_failures = 0
            for _ in range(count - len(live)):
                self.slots.append(_Slot(self, len(self.slots)))
        elif count < len(live):
            leaving = live[count:]
            self.slots = [s for s in self.slots if s not in leaving]
            await asyncio.gather(*(slot.stop() for slot in leaving))
        self._changed.set()

    async def wait_ready(self, timeout_s: float) -> None:
        """Return once every wanted worker is ready; raise ModelLoadError if the pool failed or time ran out."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.failed:
                raise ModelLoadError(self.last_error or "workers failed to load")
            if self.ready_count() >= self.target:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ModelLoadError(
                    f"only {self.ready_count()} of {self.target} workers ready after {timeout_s:g} s"
                    + (f"; last error: {self.last_error}" if self.last_error else "")
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))

    async def drain(self, timeout_s: float) -> None:
        """Wait until the queue is empty and no batch is in flight (or the timeout passes)."""
        deadline = time.monotonic() + timeout_s
        while (len(self.batcher) or self.in_flight) and time.monotonic() < deadline and not self.failed:
            if not self.slots:
                break
            self.idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), 0.05)

    async def stop(self) -> None:
        slots, self.slots = self.slots, []
        await asyncio.gather(*(slot.stop() for slot in slots), return_exceptions=True)
