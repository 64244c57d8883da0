"""The batcher: batch size, delay bound, busy-worker batching, abandoned jobs, back-pressure, putting jobs back."""

from __future__ import annotations

import asyncio

import pytest

from modelserve.batching.batcher import Batcher, Job
from modelserve.batching.types import InferRequest, InferResult
from modelserve.errors import ServiceUnavailableError


def job(name: str, enqueued_at: float = 100.0) -> Job:
    return Job(InferRequest(name, "", {}), asyncio.get_running_loop().create_future(), enqueued_at=enqueued_at)


def names(jobs: list[Job]) -> list[str]:
    return [j.request.request_id for j in jobs]


def test_batch_takes_what_is_queued_up_to_batch_size() -> None:
    async def scenario() -> list[list[str]]:
        batcher = Batcher(10)
        for index in range(5):
            batcher.submit(job(str(index)))
        return [names(batcher.take(3, 1.0, busy=False)), names(batcher.take(3, 1.0, busy=False))]

    assert asyncio.run(scenario()) == [["0", "1", "2"], ["3", "4"]]


def test_partial_batch_waits_for_company_only_while_busy_and_only_until_its_delay() -> None:
    async def scenario() -> tuple[list[str], float | None, list[str], list[str]]:
        batcher = Batcher(10)
        batcher.submit(job("a", enqueued_at=100.0))
        waiting = names(batcher.take(8, 0.2, busy=True, now=100.1))
        deadline = batcher.deadline(0.2)
        after_delay = names(batcher.take(8, 0.2, busy=True, now=100.2))
        batcher.submit(job("b", enqueued_at=100.3))
        idle = names(batcher.take(8, 5.0, busy=False, now=100.3))
        return waiting, deadline, after_delay, idle

    waiting, deadline, after_delay, idle = asyncio.run(scenario())
    assert waiting == [], "busy and not full: the batch waits"
    assert deadline == pytest.approx(100.2), "until max_batch_delay after its first job arrived"
    assert after_delay == ["a"]
    assert idle == ["b"], "nothing in flight: a lone request goes at once"


def test_full_batch_and_jobs_that_waited_while_busy_go_at_once() -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        batcher = Batcher(10)
        for index in range(4):
            batcher.submit(job(str(index), enqueued_at=100.0))
        full = names(batcher.take(4, 10.0, busy=True, now=100.0))
        for index in range(3):
            batcher.submit(job(f"late{index}", enqueued_at=100.0))
        waited = names(batcher.take(8, 0.25, busy=True, now=100.3))  # the delay passed while the workers were busy
        return full, waited

    full, waited = asyncio.run(scenario())
    assert full == ["0", "1", "2", "3"]
    assert waited == ["late0", "late1", "late2"]


def test_abandoned_jobs_are_skipped_and_full_queue_refuses() -> None:
    async def scenario() -> tuple[list[str], float | None]:
        batcher = Batcher(2)
        gone = job("gone", enqueued_at=1.0)
        batcher.submit(gone)
        batcher.submit(job("kept", enqueued_at=2.0))
        with pytest.raises(ServiceUnavailableError, match="queue is full"):
            batcher.submit(job("refused"))
        gone.future.cancel()
        deadline = batcher.deadline(0.5)  # an abandoned head does not hold the batch's deadline
        batcher.submit(job("fits now"))
        return names(batcher.take(5, 0.0, busy=False)), deadline

    taken, deadline = asyncio.run(scenario())
    assert taken == ["kept", "fits now"]
    assert deadline == pytest.approx(2.5)


def test_abandoned_jobs_do_not_count_towards_a_full_batch() -> None:
    async def scenario() -> list[str]:
        batcher = Batcher(10)
        jobs = [job(str(index)) for index in range(4)]
        for item in jobs:
            batcher.submit(item)
        jobs[1].future.cancel()
        return names(batcher.take(4, 10.0, busy=True, now=100.0))

    assert asyncio.run(scenario()) == [], "three live jobs are not a batch of four"


def test_jobs_put_back_go_first_in_their_order_and_wake_the_pool() -> None:
    async def scenario() -> tuple[list[str], int]:
        calls = []
        batcher = Batcher(10)
        batcher.on_job = lambda: calls.append(1)
        for index in range(4):
            batcher.submit(job(str(index)))
        taken = batcher.take(2, 0.0, busy=False)
        taken[0].future.cancel()  # its client left meanwhile: not put back
        batcher.push_front(taken)
        return names(batcher.take(8, 0.0, busy=False)), len(calls)

    order, calls = asyncio.run(scenario())
    assert order == ["1", "2", "3"]
    assert calls == 5, "every submit and the put-back tell the pool"


def test_fail_all_fails_waiting_jobs() -> None:
    async def scenario() -> BaseException | InferResult | None:
        batcher = Batcher(4)
        waiting = job("x")
        batcher.submit(waiting)
        batcher.fail_all(ServiceUnavailableError("gone"))
        return waiting.future.exception()

    assert isinstance(asyncio.run(scenario()), ServiceUnavailableError)
