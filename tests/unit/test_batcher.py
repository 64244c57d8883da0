"""The batcher: batch size, delay bound, busy-worker batching, abandoned jobs, back-pressure."""

from __future__ import annotations

import asyncio
import time

import pytest

from modelserve.batching.batcher import Batcher, Job
from modelserve.errors import ServiceUnavailableError
from modelserve.workers.protocol import InferRequest, InferResult


def job(name: str) -> Job:
    return Job(InferRequest(name, "", {}), asyncio.get_running_loop().create_future())


def test_batch_takes_what_is_queued_up_to_batch_size() -> None:
    async def scenario() -> list[list[str]]:
        batcher = Batcher(10)
        for index in range(5):
            batcher.submit(job(str(index)))
        first = await batcher.next_batch(3, 1.0)
        second = await batcher.next_batch(3, 0.0)
        return [[j.request.request_id for j in first], [j.request.request_id for j in second]]

    assert asyncio.run(scenario()) == [["0", "1", "2"], ["3", "4"]]


def test_partial_batch_leaves_after_max_batch_delay() -> None:
    async def scenario() -> tuple[int, float]:
        batcher = Batcher(10)
        batcher.submit(job("a"))
        started = time.monotonic()
        batch = await batcher.next_batch(8, 0.2)
        return len(batch), time.monotonic() - started

    size, elapsed = asyncio.run(scenario())
    assert size == 1 and 0.15 <= elapsed < 2.0


def test_jobs_that_waited_while_workers_were_busy_go_at_once() -> None:
    async def scenario() -> float:
        batcher = Batcher(10)
        for index in range(3):
            batcher.submit(job(str(index)))
        await asyncio.sleep(0.3)  # the delay already passed while "workers were busy"
        started = time.monotonic()
        await batcher.next_batch(8, 0.25)
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 0.1


def test_abandoned_jobs_are_skipped_and_full_queue_refuses() -> None:
    async def scenario() -> list[str]:
        batcher = Batcher(2)
        gone = job("gone")
        batcher.submit(gone)
        batcher.submit(job("kept"))
        with pytest.raises(ServiceUnavailableError, match="queue is full"):
            batcher.submit(job("refused"))
        gone.future.cancel()
        batcher.submit(job("fits now"))
        batch = await batcher.next_batch(5, 0.0)
        return [j.request.request_id for j in batch]

    assert asyncio.run(scenario()) == ["kept", "fits now"]


def test_cancelled_collection_puts_jobs_back() -> None:
    async def scenario() -> list[str]:
        batcher = Batcher(10)
        batcher.submit(job("first"))
        waiting = asyncio.create_task(batcher.next_batch(4, 5.0))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        return [j.request.request_id for j in await batcher.next_batch(4, 0.0)]

    assert asyncio.run(scenario()) == ["first"]


def test_fail_all_fails_waiting_jobs() -> None:
    async def scenario() -> BaseException | InferResult | None:
        batcher = Batcher(4)
        waiting = job("x")
        batcher.submit(waiting)
        batcher.fail_all(ServiceUnavailableError("gone"))
        return waiting.future.exception()

    assert isinstance(asyncio.run(scenario()), ServiceUnavailableError)
