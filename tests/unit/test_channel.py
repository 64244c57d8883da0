"""The worker channel, on a fake handle: one batch at the worker at a time, the next armed behind it, timeouts from
when a batch is sent, replies matched to batches, everything failed when the worker is lost."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from modelserve.batching.types import InferRequest, InferResult
from modelserve.errors import WorkerDiedError, WorkerTimeoutError
from modelserve.workers.channel import Dispatch, WorkerChannel, WorkerState
from modelserve.workers.protocol import InferMessage, InitMessage, ResultMessage
from tests.support.fake_backend import FakeHandle, FakeScheduler, until

Outcome = tuple[bool, ResultMessage | None, BaseException | None]


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 10))


def init() -> InitMessage:
    return InitMessage("m", "1.0", "/nowhere", "h", {}, {}, 1, 1, "w-1")


def batch(batch_id: int, *bodies: bytes) -> InferMessage:
    return InferMessage(batch_id, [InferRequest(f"r{batch_id}-{i}", "text/plain", {}, b) for i, b in enumerate(bodies)])


def dispatch(message: InferMessage, outcomes: list[Outcome], timeout_s: float = 30.0, prune: Any = None) -> Dispatch:
    def done(d: Dispatch, reply: ResultMessage | None, error: BaseException | None) -> None:
        outcomes.append((d.sent, reply, error))

    return Dispatch(message, timeout_s, prune, done)


async def started(scheduler: FakeScheduler | None = None) -> tuple[FakeHandle, WorkerChannel]:
    handle = FakeHandle("w-1")
    channel = WorkerChannel(handle, scheduler)
    await channel.start(init(), 5)
    assert channel.state is WorkerState.READY
    return handle, channel


def state(channel: WorkerChannel) -> WorkerState:
    return channel.state  # read through a call: mypy would keep the state narrowed by an earlier assert


def test_a_batch_goes_at_once_and_the_next_waits_until_the_first_is_answered() -> None:
    async def scenario() -> None:
        handle, channel = await started(FakeScheduler())
        outcomes: list[Outcome] = []
        channel.submit(dispatch(batch(1, b"a"), outcomes))
        channel.submit(dispatch(batch(2, b"b"), outcomes))
        assert [m.batch_id for m in handle.sent] == [1]  # the second is armed, not sent
        assert channel.state is WorkerState.BUSY
        handle.reply(0)
        assert [m.batch_id for m in handle.sent] == [1, 2]  # sent in the same step the first was answered
        assert outcomes[0][1] is not None and outcomes[0][1].results[0].body == b"ok:a"
        handle.reply(1)
        assert [o[1].results[0].body for o in outcomes if o[1]] == [b"ok:a", b"ok:b"]
        assert state(channel) is WorkerState.READY

    run(scenario())


def test_a_batch_past_its_timeout_fails_with_504_and_the_worker_is_killed() -> None:
    async def scenario() -> None:
        scheduler = FakeScheduler()
        handle, channel = await started(scheduler)
        outcomes: list[Outcome] = []
        channel.submit(dispatch(batch(1, b"slow"), outcomes, timeout_s=2.5))
        channel.submit(dispatch(batch(2, b"behind"), outcomes))
        assert [t.delay for t in scheduler.armed()] == [2.5]  # only the batch sent is timed
        assert scheduler.fire() == 1
        assert isinstance(outcomes[0][2], WorkerTimeoutError)
        assert "responseTimeout (2.5 s)" in str(outcomes[0][2])
        await until(lambda: handle.killed)
        # the batch behind it never reached the worker: it fails as not sent, for the pool to run elsewhere
        assert outcomes[1][0] is False and isinstance(outcomes[1][2], WorkerDiedError)
        assert channel.state is WorkerState.STOPPED

    run(scenario())


def test_an_answered_batch_cancels_its_timer() -> None:
    async def scenario() -> None:
        scheduler = FakeScheduler()
        handle, channel = await started(scheduler)
        outcomes: list[Outcome] = []
        channel.submit(dispatch(batch(1, b"a"), outcomes))
        handle.reply(0)
        assert scheduler.armed() == []
        assert scheduler.fire() == 0 and len(outcomes) == 1 and outcomes[0][2] is None

    run(scenario())


def test_a_worker_lost_fails_the_batch_it_computes_as_sent_and_the_one_behind_as_not_sent() -> None:
    async def scenario() -> None:
        handle, channel = await started(FakeScheduler())
        outcomes: list[Outcome] = []
        channel.submit(dispatch(batch(1, b"a"), outcomes))
        channel.submit(dispatch(batch(2, b"b"), outcomes))
        handle.die("exit code 3")
        assert [(sent, str(error)) for sent, _, error in outcomes] == [(True, "exit code 3"), (False, "exit code 3")]
        assert await channel.wait_exit() == "worker exited (exit code 3)"
        # nothing more reaches a lost worker
        channel.submit(dispatch(batch(3, b"c"), outcomes))
        assert outcomes[2][0] is False and str(outcomes[2][2]) == "exit code 3"
        assert [m.batch_id for m in handle.sent] == [1]

    run(scenario())


def test_requests_whose_clients_left_are_pruned_before_sending_and_an_empty_batch_is_not_sent() -> None:
    async def scenario() -> None:
        handle, channel = await started(FakeScheduler())
        outcomes: list[Outcome] = []
        channel.submit(dispatch(batch(1, b"a"), outcomes))

        def drop_first(message: InferMessage) -> InferMessage | None:
            return InferMessage(message.batch_id, message.requests[1:])

        channel.submit(dispatch(batch(2, b"gone", b"kept"), outcomes, prune=drop_first))
        channel.submit(dispatch(batch(3, b"all gone"), outcomes, prune=lambda _m: None))
        handle.reply(0)
        assert [len(m.requests) for m in handle.sent] == [1, 1]
        assert handle.sent[1].requests[0].body == b"kept"
        handle.reply(1)
        # batch 3 was pruned when batch 2 was answered, before batch 2's results were delivered
        assert outcomes[-2] == (False, None, None)  # pruned to nothing: finished without being sent
        assert outcomes[-1][1] is not None and outcomes[-1][1].results[0].body == b"ok:kept"
        assert channel.state is WorkerState.READY

    run(scenario())


@pytest.mark.parametrize("wrong", ["batch_id", "count"])
def test_a_reply_that_matches_no_batch_fails_everything_and_kills_the_worker(wrong: str) -> None:
    async def scenario() -> None:
        handle, channel = await started(FakeScheduler())
        outcomes: list[Outcome] = []
        channel.submit(dispatch(batch(1, b"a", b"b"), outcomes))
        message = handle.sent[0]
        results = handle_results(message, drop=1 if wrong == "count" else 0)
        channel.on_reply(ResultMessage(batch_id=message.batch_id + (1 if wrong == "batch_id" else 0), results=results))
        assert isinstance(outcomes[0][2], WorkerDiedError) and "out of protocol" in str(outcomes[0][2])
        await until(lambda: handle.killed)

    run(scenario())


def handle_results(message: InferMessage, drop: int) -> list[InferResult]:
    return [InferResult(200, "text/plain") for _ in message.requests[drop:]]


def test_a_reply_when_nothing_was_sent_is_a_protocol_break() -> None:
    async def scenario() -> None:
        handle, channel = await started(FakeScheduler())
        channel.on_reply(ResultMessage(batch_id=7, results=[]))
        await until(lambda: handle.killed)
        assert channel.state is WorkerState.STOPPED

    run(scenario())
