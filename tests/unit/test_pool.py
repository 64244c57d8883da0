"""The worker pool on a fake backend: least-loaded dispatch, a dying worker's queued batch run elsewhere, back-off,
scale-down draining, load failures, memory recycling."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from modelserve.batching.batcher import Batcher, Job
from modelserve.batching.types import InferRequest, InferResult
from modelserve.errors import ModelLoadError, WorkerDiedError
from modelserve.stats import VersionStats
from modelserve.workers.backend import WorkerSpec
from modelserve.workers.pool import PIPELINE_DEPTH, PoolSettings, WorkerPool
from modelserve.workers.protocol import InitMessage
from tests.support.fake_backend import FakeBackend, FakeScheduler, until


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 10))


class Rig:
    """A pool of fake workers, its batcher, and what it slept for."""

    def __init__(self, batch_size: int = 1, max_load_failures: int = 3, memory_limit: int = 0) -> None:
        self.backend = FakeBackend()
        self.scheduler = FakeScheduler()
        self.sleeps: list[float] = []
        self.batcher = Batcher(100)
        self.stats = VersionStats()
        settings = PoolSettings(batch_size, 0.0, 30.0, 5.0, max_load_failures, memory_limit)
        spec = WorkerSpec(label="m:1.0", model_dir=Path("/nowhere"), needs_torch=False)
        self.pool = WorkerPool(
            "m:1.0", self.batcher, settings, self.stats, self.init, lambda: 1, self.backend, spec,
            schedule=self.scheduler, sleep=self.sleep,
        )  # fmt: skip

    def init(self, worker_id: str) -> InitMessage:
        return InitMessage("m", "1.0", "/nowhere", "h", {}, {}, 1, 1, worker_id)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await asyncio.sleep(0)

    def submit(self, body: bytes) -> Job:
        job = Job(InferRequest(body.decode(), "text/plain", {}, body), asyncio.get_running_loop().create_future())
        self.batcher.submit(job)
        return job


async def answer_everything(rig: Rig) -> None:
    """Reply to every batch until the queue is empty and nothing is in flight (so the pool can stop gently)."""
    for _ in range(1000):
        if not len(rig.batcher) and not rig.pool.in_flight:
            return
        if not sum(handle.reply_all() for handle in rig.backend.handles):
            await asyncio.sleep(0.001)
    raise AssertionError("the pool never went quiet")


def sent_bodies(handle: Any) -> list[list[bytes]]:
    return [[r.body for r in m.requests] for m in handle.sent]


def test_batches_go_to_the_least_loaded_worker_with_at_most_two_outstanding_each() -> None:
    async def scenario() -> None:
        rig = Rig()
        await rig.pool.scale(2)
        await rig.pool.wait_ready(5)
        jobs = [rig.submit(f"{i}".encode()) for i in range(6)]
        first, second = rig.backend.handles
        # each worker computes one batch and holds one armed behind it; the rest wait in the queue
        assert len(first.sent) == 1 and len(second.sent) == 1
        assert len(rig.batcher) == 6 - 2 * PIPELINE_DEPTH
        first.reply(0)
        await until(jobs[0].future.done)
        result = jobs[0].future.result()
        assert isinstance(result, InferResult) and result.body == b"ok:0"
        assert len(rig.batcher) == 1  # the freed place was filled at once
        await answer_everything(rig)
        assert [job.future.result().body for job in jobs] == [f"ok:{i}".encode() for i in range(6)]
        await rig.pool.stop()

    run(scenario())


def test_a_worker_that_dies_fails_its_batch_runs_the_queued_one_elsewhere_and_is_replaced_with_back_off() -> None:
    async def scenario() -> None:
        rig = Rig()
        await rig.pool.scale(1)
        await rig.pool.wait_ready(5)
        computing, queued = rig.submit(b"a"), rig.submit(b"b")
        worker = rig.backend.handles[0]
        assert sent_bodies(worker) == [[b"a"]]
        worker.die("killed by signal SIGKILL")
        await until(computing.future.done)
        error = computing.future.exception()
        assert isinstance(error, WorkerDiedError)
        assert f"worker {worker.worker_id} died while handling the request (killed by signal SIGKILL)" in str(error)
        # the batch it never received runs on the replacement, after a back-off
        await until(lambda: len(rig.backend.handles) == 2 and bool(rig.backend.handles[1].sent))
        replacement = rig.backend.handles[1]
        assert sent_bodies(replacement) == [[b"b"]]
        assert rig.sleeps and rig.sleeps[0] > 0
        assert rig.stats.worker_restarts == 1
        replacement.reply(0)
        await until(queued.future.done)
        assert queued.future.result().body == b"ok:b"
        await rig.pool.stop()

    run(scenario())


def test_a_batch_its_transport_refused_before_it_ran_is_retried_once_on_another_worker() -> None:
    async def scenario() -> None:
        rig = Rig()
        await rig.pool.scale(1)
        await rig.pool.wait_ready(5)
        job = rig.submit(b"a")
        first = rig.backend.handles[0]
        first.die("Ray actor unavailable", frozenset({first.sent[0].batch_id}))
        # not failed: it never started, so the replacement runs it
        await until(lambda: len(rig.backend.handles) == 2 and bool(rig.backend.handles[1].sent))
        assert not job.future.done()
        second = rig.backend.handles[1]
        assert sent_bodies(second) == [[b"a"]]
        # refused again: once is the limit, the request fails with the cause
        second.die("Ray actor unavailable", frozenset({second.sent[0].batch_id}))
        await until(job.future.done)
        error = job.future.exception()
        assert isinstance(error, WorkerDiedError) and "Ray actor unavailable" in str(error)
        # a batch that had started when its worker died fails at once, as before
        await until(lambda: len(rig.backend.handles) == 3 and rig.backend.handles[2].alive)
        started = rig.submit(b"b")
        third = rig.backend.handles[2]
        await until(lambda: bool(third.sent))
        third.die("Ray actor died", frozenset())
        await until(started.future.done)
        assert isinstance(started.future.exception(), WorkerDiedError)
        await rig.pool.stop()

    run(scenario())


def test_scale_down_lets_the_leaving_worker_finish_its_batch_then_stops_it() -> None:
    async def scenario() -> None:
        rig = Rig()
        await rig.pool.scale(2)
        await rig.pool.wait_ready(5)
        first_job, second_job = rig.submit(b"a"), rig.submit(b"b")
        leaving = rig.backend.handles[1]
        assert sent_bodies(leaving) == [[b"b"]]
        shrinking = asyncio.ensure_future(rig.pool.scale(1))
        await asyncio.sleep(0.01)
        assert not shrinking.done() and not leaving.stopped  # it drains first
        later = rig.submit(b"c")
        leaving.reply(0)
        await asyncio.wait_for(shrinking, 5)
        assert second_job.future.result().body == b"ok:b"
        assert leaving.stopped and not leaving.killed
        staying = rig.backend.handles[0]
        assert sent_bodies(staying) == [[b"a"]]  # "c" waits behind "a" at the worker that stays
        staying.reply(0)
        assert sent_bodies(staying) == [[b"a"], [b"c"]]
        staying.reply(1)
        await until(lambda: later.future.done() and first_job.future.done())
        assert later.future.result().body == b"ok:c"
        assert rig.pool.target == 1
        await rig.pool.stop()

    run(scenario())


def test_repeated_load_failures_fail_the_pool_and_every_queued_request() -> None:
    async def scenario() -> None:
        rig = Rig(max_load_failures=2)
        rig.backend.load_errors = ["no such file: model.pt", "no such file: model.pt"]
        job = rig.submit(b"a")
        await rig.pool.scale(1)
        try:
            await rig.pool.wait_ready(5)
        except ModelLoadError as exc:
            assert "no such file: model.pt" in str(exc)
        else:
            raise AssertionError("wait_ready should fail")
        assert rig.pool.failed and rig.pool.last_error == "no such file: model.pt"
        assert isinstance(job.future.exception(), ModelLoadError)
        assert rig.sleeps == [0.1]  # one back-off between the two attempts
        assert rig.stats.worker_load_failures == 2 and rig.stats.worker_restarts == 0
        await rig.pool.stop()

    run(scenario())


def test_a_load_failure_then_success_serves_and_resets_the_count() -> None:
    async def scenario() -> None:
        rig = Rig(max_load_failures=3)
        rig.backend.load_errors = ["transient"]
        await rig.pool.scale(1)
        await rig.pool.wait_ready(5)
        assert not rig.pool.failed and rig.pool.consecutive_load_failures == 0
        assert len(rig.backend.handles) == 2
        await rig.pool.stop()

    run(scenario())


def test_a_worker_over_its_memory_limit_is_recycled_after_its_batch_without_back_off() -> None:
    async def scenario() -> None:
        rig = Rig(memory_limit=1000)
        rig.backend.memory_bytes = 5000
        await rig.pool.scale(1)
        await rig.pool.wait_ready(5)
        job = rig.submit(b"a")
        heavy = rig.backend.handles[0]
        heavy.reply(0)
        await until(job.future.done)
        assert job.future.result().body == b"ok:a"  # the batch that crossed the limit is answered
        await until(lambda: heavy.stopped and len(rig.backend.live()) == 1)
        assert not heavy.killed
        assert rig.stats.worker_recycles["memory"] == 1 and rig.stats.worker_restarts == 0
        assert rig.sleeps == []
        await rig.pool.stop()

    run(scenario())


def test_stop_stops_every_worker_gently() -> None:
    async def scenario() -> None:
        rig = Rig()
        await rig.pool.scale(3)
        await rig.pool.wait_ready(5)
        await rig.pool.stop()
        assert [h.stopped for h in rig.backend.handles] == [True, True, True]
        assert rig.backend.live() == []

    run(scenario())
