"""A supervised pool of workers for one model version, fed by the version's batcher.

Each slot runs one worker at a time. The pool forms batches from the version's queue whenever a worker can take one
(up to PIPELINE_DEPTH each) and sends them in the same call; the worker's reply reader delivers results. A worker that
dies fails the batch it was computing at once (500 naming the exit), batches it never received go back to the queue,
and it is replaced with Fibonacci back-off; a handler past responseTimeout gets 504 and its worker is replaced; when
every load attempt keeps failing, the pool reports FAILED.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from modelserve.batching.batcher import Batcher, Job
from modelserve.batching.types import InferResult
from modelserve.errors import ModelLoadError, WorkerDiedError, WorkerLoadError
from modelserve.stats import VersionStats
from modelserve.workers.backend import WorkerBackend, WorkerSpec
from modelserve.workers.channel import Dispatch, Scheduler, WorkerChannel, WorkerState
from modelserve.workers.protocol import InferMessage, InitMessage, ResultMessage

log = logging.getLogger("modelserve.pool")

# batches outstanding at one worker: the next waits in its socket while the current one computes
PIPELINE_DEPTH = 2
BACKOFF_S = (0.1, 0.1, 0.2, 0.3, 0.5, 0.8, 1.3, 2.1, 3.4, 5.5)
# why a slot let its worker go on purpose (a reason its _serve returns)
RECYCLE_MEMORY = "memory"
_batch_ids = itertools.count(1)
_SERVING = (WorkerState.READY, WorkerState.BUSY)


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
    memory_limit_bytes: int = 0  # workerMemoryLimit: recycle a worker over it after its batch (0: no limit)
    # no batchSize was configured: a batch size the handler declares (reported when its worker is ready) applies
    batch_size_auto: bool = False


class _Slot:
    """One position in the pool: keeps a worker alive and hands it the batches the pool forms.

    Nothing here runs per batch as a task: the pool's ``kick`` sends a batch from whatever call noticed the chance (a
    request arriving, a worker answering, a batch delay running out), and the worker's reply reader delivers results
    through a callback. The slot's own task only starts, watches and replaces its worker.
    """

    def __init__(self, pool: WorkerPool, index: int) -> None:
        self.pool = pool
        self.index = index
        self.worker: WorkerChannel | None = None
        self.accepting = False  # the worker is ready and takes batches
        self.outstanding = 0  # batches given to the worker and not finished
        self.stopping = False
        self._down: asyncio.Future[str | None] | None = None  # resolved when the worker must go (None: stop)
        self._quiet = asyncio.Event()  # set whenever nothing is outstanding
        self._quiet.set()
        self.task = asyncio.create_task(self._run(), name=f"slot-{pool.label}-{index}")

    async def _run(self) -> None:
        deaths = 0
        while not self.stopping:
            worker = await self._start_worker()
            if worker is None:
                return
            started = time.monotonic()
            recycle = False
            try:
                reason = await self._serve(worker)
                recycle = reason == RECYCLE_MEMORY
                if recycle:
                    # it takes no new batch; the ones it holds finish normally, then it exits cleanly
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._quiet.wait(), PIPELINE_DEPTH * self.pool.settings.response_timeout_s
                        )
                else:
                    if reason is not None:
                        log.warning("worker %s died: %s", worker.worker_id, reason)
                    # the batches it held fail with the reason its reply reader sees (the exit status, usually)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._quiet.wait(), 2.0)
            finally:
                self.accepting = False
                if self.stopping or recycle:
                    await worker.stop()
                else:
                    await worker.kill()
            if self.stopping:
                return
            if recycle:
                self.pool.stats.worker_recycles[RECYCLE_MEMORY] += 1
                continue  # replaced at once: no back-off, nothing died
            self.pool.stats.worker_restarts += 1
            # a worker that lived a while earns a fresh back-off
            deaths = 1 if time.monotonic() - started > 30 else deaths + 1
            await self.pool.sleep(backoff_delay(deaths))

    async def _start_worker(self) -> WorkerChannel | None:
        pool = self.pool
        while not self.stopping:
            worker_id = f"{pool.label}-{next(pool.worker_ids)}"
            handle = pool.backend.create(pool.spec, worker_id, f"{pool.label}:{self.index}", pool.thread_count())
            worker = WorkerChannel(handle, pool.schedule)
            self.worker = worker
            try:
                await worker.start(pool.make_init(worker_id), pool.settings.startup_timeout_s)
            except WorkerLoadError as exc:
                await worker.kill()
                failures = pool.load_failed(str(exc))
                if pool.failed:
                    return None
                await pool.sleep(backoff_delay(failures))
                continue
            except asyncio.CancelledError:
                await worker.kill()
                raise
            pool.load_succeeded()
            if worker.signature:
                pool.signature = worker.signature
            if pool.settings.batch_size_auto and worker.declared_batch_size:
                pool.settings.batch_size = worker.declared_batch_size
            return worker
        return None

    async def _serve(self, worker: WorkerChannel) -> str | None:
        """Take batches until the worker must go; return why (None: the slot is stopping)."""
        down: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._down = down
        if self.stopping:
            # stop() came while this worker started and cancelled the start, but the cancellation was lost: Python
            # 3.11's asyncio.wait_for drops it when the awaited reply lands in the same step. Nobody would resolve
            # ``down`` then, and the unregister waiting for this slot would hang: the slot stops here instead.
            down.set_result(None)
        exit_watch = asyncio.ensure_future(worker.wait_exit())

        def exited(watch: asyncio.Future[str]) -> None:
            if not watch.cancelled():
                self._mark_down(watch.result())

        exit_watch.add_done_callback(exited)
        self.accepting = not self.stopping
        self.pool.kick()  # jobs that queued while this worker was starting
        try:
            return await down
        finally:
            self.accepting = False
            self._down = None
            exit_watch.remove_done_callback(exited)
            exit_watch.cancel()

    def _mark_down(self, reason: str | None) -> None:
        self.accepting = False
        if self._down is not None and not self._down.done():
            self._down.set_result(reason)

    def send(self, jobs: list[Job]) -> None:
        """Give one batch to this slot's worker (the pool checked that it accepts)."""
        pool = self.pool
        worker = self.worker
        assert worker is not None
        now = time.monotonic()
        for job in jobs:
            job.started_at = now
        live = jobs
        counted = len(live)
        pool.in_flight += counted
        self.outstanding += 1
        self._quiet.clear()

        def prune(sent: InferMessage) -> InferMessage | None:
            # clients that left while this batch waited for the worker are dropped before it is sent
            nonlocal live
            kept = [job for job in live if not job.abandoned]
            if len(kept) == len(live):
                return sent
            live = kept
            return InferMessage(batch_id=sent.batch_id, requests=[job.request for job in kept]) if kept else None

        def release(cause: BaseException | None = None) -> None:
            # the worker holds nothing more of the batch (a streaming batch: its streams ended, or broke off)
            if cause is not None:
                self._mark_down(str(cause))
            pool.in_flight -= counted
            self.outstanding -= 1
            if self.outstanding == 0:
                self._quiet.set()
            pool.idle.set()
            pool.kick()

        def done(dispatch: Dispatch, reply: ResultMessage | None, error: BaseException | None) -> None:
            held = dispatch.held and error is None and reply is not None  # the worker streams on
            try:
                self._deliver(worker, live, dispatch.sent, reply, error)
                if error is None:
                    self._check_memory(worker)
            finally:
                if held:
                    dispatch.on_released = release
                else:
                    release()

        def on_stream(dispatch: Dispatch, index: int, result: InferResult) -> bool:
            # a streamed answer (or the plain answer of a stream that ended before its first piece)
            job = live[index]
            if job.future.done():
                return False
            job.future.set_result(result)
            return True

        message = InferMessage(batch_id=next(_batch_ids), requests=[job.request for job in live])
        worker.submit(Dispatch(message, pool.settings.response_timeout_s, prune, done, on_stream))

    def _check_memory(self, worker: WorkerChannel) -> None:
        """After a batch: a worker over workerMemoryLimit takes no more batches and is replaced once it is done."""
        limit = self.pool.settings.memory_limit_bytes
        if not limit or worker is not self.worker or self._down is None or self._down.done():
            return
        rss = worker.usage().memory_bytes
        if rss > limit:
            log.warning("worker %s uses %d bytes, more than workerMemoryLimit (%d): it is replaced after its batch",
                        worker.worker_id, rss, limit)  # fmt: skip
            self._mark_down(RECYCLE_MEMORY)

    def _deliver(
        self,
        worker: WorkerChannel,
        jobs: list[Job],
        sent: bool,
        reply: ResultMessage | None,
        error: BaseException | None,
    ) -> None:
        if error is not None:
            self._mark_down(str(error))
            if not sent and isinstance(error, WorkerDiedError):
                if error.unstarted:
                    # refused by the worker's transport after it was handed over: retried once, on another worker
                    for job in jobs:
                        if job.requeued and not job.future.done():
                            job.future.set_exception(WorkerDiedError(f"no worker could take the request ({error})"))
                    jobs = [job for job in jobs if not job.requeued]
                    for job in jobs:
                        job.requeued += 1
                self.pool.batcher.push_front(jobs)  # never reached the worker: another one runs them
                return
            if isinstance(error, WorkerDiedError):
                error = WorkerDiedError(f"worker {worker.worker_id} died while handling the request ({error})")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
            return
        if reply is None:
            return  # every client of the batch had gone
        streamed = reply.streamed
        for index, (job, result) in enumerate(zip(jobs, reply.results, strict=True)):
            if not job.future.done() and index not in streamed:  # a stream answers with its first frame
                job.future.set_result(result)
        # recorded after the waiting requests have been woken: their responses go out first (the callbacks run in
        # order, so the figures are in place before the server reads anything new, a /metrics scrape included)
        asyncio.get_running_loop().call_soon(
            self._record, len(jobs), [job.started_at - job.enqueued_at for job in jobs], reply
        )

    def _record(self, size: int, queue_waits: list[float], reply: ResultMessage) -> None:
        self.pool.stats.record_batch(size, queue_waits, reply.timings)
        if reply.metrics:
            self.pool.stats.record_handler_metrics(reply.metrics)

    async def stop(self) -> None:
        """Take no more batches, let the ones at the worker finish, then stop the worker."""
        self.stopping = True
        self.accepting = False
        if self._down is not None:
            await self._quiet.wait()
            self._mark_down(None)
        else:
            self.task.cancel()  # starting a worker or backing off
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


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
        backend: WorkerBackend,
        spec: WorkerSpec,
        schedule: Scheduler | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.label = label
        self.batcher = batcher
        self.settings = settings
        self.stats = stats
        self.make_init = make_init
        self.thread_count = thread_count
        self.backend = backend
        self.spec = spec
        self.schedule = schedule  # per-batch timeout timers (None: the event loop's call_later); tests inject theirs
        self.sleep = sleep  # back-off waits
        self.slots: list[_Slot] = []
        self.worker_ids = itertools.count(1)
        self.failed = False
        self.last_error = ""
        self.consecutive_load_failures = 0
        self.in_flight = 0
        self.idle = asyncio.Event()
        self._changed = asyncio.Event()
        self.signature: dict[str, Any] = {}
        self._kicking = False
        self._kick_again = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        batcher.on_job = self.kick

    def kick(self) -> None:
        """Form and send batches while a worker can take one; called whenever that may have changed."""
        if self._kicking:
            self._kick_again = True  # a callback of a send asked again: the running loop picks it up
            return
        self._kicking = True
        try:
            self._kick_again = True
            while self._kick_again:
                self._kick_again = False
                self._dispatch()
        finally:
            self._kicking = False

    def _dispatch(self) -> None:
        batcher = self.batcher
        settings = self.settings
        while len(batcher):
            slot: _Slot | None = None
            for candidate in self.slots:  # the least loaded worker that can take a batch
                if candidate.accepting and candidate.outstanding < PIPELINE_DEPTH:
                    if slot is None or candidate.outstanding < slot.outstanding:
                        slot = candidate
                    if candidate.outstanding == 0:
                        break
            if slot is None:
                return
            jobs = batcher.take(settings.batch_size, settings.max_batch_delay_s, self.in_flight > 0)
            if not jobs:
                deadline = batcher.deadline(settings.max_batch_delay_s)
                if deadline is not None:
                    self._wake_at(deadline)
                return
            slot.send(jobs)

    def _wake_at(self, deadline: float) -> None:
        """Kick again when the waiting batch's delay runs out (one timer for the pool, the earliest wins)."""
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.kick()

    @property
    def target(self) -> int:
        return len([s for s in self.slots if not s.stopping])

    def workers(self) -> list[WorkerChannel]:
        return [s.worker for s in self.slots if s.worker is not None and not s.stopping]

    def ready_count(self) -> int:
        return sum(1 for w in self.workers() if w.alive and w.state in _SERVING)

    def load_failed(self, error: str) -> int:
        self.last_error = error
        self.consecutive_load_failures += 1
        self.stats.worker_load_failures += 1
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
        """Stop every worker after what it holds; streams still open (the drain time is over) end with 503."""
        slots, self.slots = self.slots, []
        for slot in slots:
            if slot.worker is not None:
                slot.worker.abort_streams("the server stopped the stream (shutting down or unregistering the model)")
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await asyncio.gather(*(slot.stop() for slot in slots), return_exceptions=True)
