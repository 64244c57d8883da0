"""Streamed answers in the parent: the piece stream's credit and cancel, and the worker channel routing stream frames
to their requests, holding the worker until its streams end, and ending streams when the worker is lost or idle."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import pytest

from modelserve.batching.stream import PieceStream
from modelserve.batching.types import ERROR_CONTENT_TYPE, InferRequest, InferResult
from modelserve.workers.channel import Dispatch, WorkerChannel, WorkerState
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
from tests.support.fake_backend import FakeHandle, FakeScheduler


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 10))


def piece(body: bytes) -> InferResult:
    return InferResult(200, "", body=body)


async def take(stream: PieceStream, count: int) -> list[bytes]:
    taken: list[bytes] = []
    iterator = stream.__aiter__()
    for _ in range(count):
        taken.append((await iterator.__anext__()).body)
    return taken


def test_the_reader_grants_credit_as_it_takes_pieces() -> None:
    async def scenario() -> None:
        grants: list[int] = []
        stream = PieceStream(4, grants.append)
        for i in range(4):
            stream.put(piece(b"%d" % i))
        assert stream.blocked, "the producer used its window"
        assert await take(stream, 1) == [b"0"]
        assert grants == [] and stream.blocked
        assert await take(stream, 1) == [b"1"]
        assert grants == [2] and not stream.blocked, "half the window taken: that much more credit"
        stream.put(piece(b"4"))
        stream.end()
        assert [p.body async for p in stream] == [b"2", b"3", b"4"]

    run(scenario())


def test_an_error_piece_ends_the_stream_and_a_waiting_reader_wakes() -> None:
    async def scenario() -> None:
        stream = PieceStream(8)
        reader = asyncio.ensure_future(take(stream, 2))
        await asyncio.sleep(0)
        stream.put(piece(b"a"))
        stream.end(InferResult(500, ERROR_CONTENT_TYPE, body=b"boom"))
        assert (await reader)[1] == b"boom"
        assert [p async for p in stream] == []

    run(scenario())


def test_cancel_tells_the_producer_once_and_drops_what_is_left() -> None:
    async def scenario() -> None:
        cancels: list[bool] = []
        stream = PieceStream(8, on_cancel=lambda: cancels.append(True))
        stream.put(piece(b"a"))
        reader = asyncio.ensure_future(take(stream, 2))
        await asyncio.sleep(0)
        stream.cancel()
        stream.cancel()
        stream.put(piece(b"late"))
        assert cancels == [True]
        with pytest.raises(StopAsyncIteration):
            await reader  # it had taken "a", then the stream stopped
        assert [p async for p in stream] == []

    run(scenario())


Delivered = dict[int, InferResult]


def batch(batch_id: int, count: int) -> InferMessage:
    return InferMessage(batch_id, [InferRequest(f"r{i}", "", {}, b"x") for i in range(count)])


def streaming_dispatch(message: InferMessage, delivered: Delivered, events: list[str]) -> Dispatch:
    def done(d: Dispatch, reply: ResultMessage | None, error: BaseException | None) -> None:
        events.append("error" if error is not None else "done")
        if reply is not None:
            for index, result in enumerate(reply.results):
                if index not in reply.streamed:
                    delivered[index] = result
        if d.held and error is None:
            d.on_released = lambda cause: events.append("released" if cause is None else "broke off")

    def on_stream(d: Dispatch, index: int, result: InferResult) -> bool:
        delivered[index] = result
        return True

    return Dispatch(message, 30.0, None, done, on_stream)


async def started(scheduler: FakeScheduler) -> tuple[FakeHandle, WorkerChannel]:
    handle = FakeHandle("w-1")
    channel = WorkerChannel(handle, scheduler)
    await channel.start(InitMessage("m", "1.0", "/nowhere", "h", {}, {}, 1, 1, "w-1"), 5)
    return handle, channel


HEAD = StreamHead(200, "text/plain")


def test_stream_frames_reach_their_requests_and_the_worker_is_held_until_they_end() -> None:
    async def scenario() -> None:
        handle, channel = await started(FakeScheduler())
        delivered: Delivered = {}
        events: list[str] = []
        channel.submit(streaming_dispatch(batch(1, 3), delivered, events))
        channel.submit(Dispatch(batch(2, 1), 30.0, None, lambda d, r, e: events.append("second")))
        results = [InferResult(200, ""), InferResult(200, "text/plain", body=b"plain"), InferResult(200, "")]
        channel.on_reply(ResultMessage(1, results, streamed=[0, 2]))
        assert delivered == {1: results[1]}, "the plain result is answered at once"
        assert events == ["done"]
        channel.on_stream(StreamPieceMessage(1, 2, b"c0", HEAD))
        channel.on_stream(StreamPieceMessage(1, 0, b"a0", HEAD))
        channel.on_stream(StreamPieceMessage(1, 2, b"c1"))
        first, third = delivered[0].stream, delivered[2].stream
        assert isinstance(first, PieceStream) and isinstance(third, PieceStream)
        assert delivered[0].content_type == "text/plain"
        channel.on_stream(StreamEndMessage(1, 2))
        assert [p.body async for p in third] == [b"c0", b"c1"]
        assert [m.batch_id for m in handle.sent] == [1] and channel.state is WorkerState.BUSY
        channel.on_stream(StreamEndMessage(1, 0, status=500, error="ValueError: late"))
        assert [(p.content_type, p.body) async for p in first] == [
            ("", b"a0"),
            (ERROR_CONTENT_TYPE, b"ValueError: late"),
        ]
        assert events == ["done", "released"]
        assert [m.batch_id for m in handle.sent] == [1, 2], "the next batch goes once the streams ended"

    run(scenario())


def test_taking_pieces_sends_credit_and_cancel_reaches_the_worker() -> None:
    async def scenario() -> None:
        handle, channel = await started(FakeScheduler())
        delivered: Delivered = {}
        channel.submit(streaming_dispatch(batch(1, 1), delivered, []))
        channel.on_reply(ResultMessage(1, [InferResult(200, "")], streamed=[0]))
        for i in range(STREAM_WINDOW):
            channel.on_stream(StreamPieceMessage(1, 0, b"%d" % i, HEAD if i == 0 else None))
        stream = delivered[0].stream
        assert isinstance(stream, PieceStream)
        await take(stream, STREAM_WINDOW // 2)
        assert handle.controls == [CreditMessage(1, 0, STREAM_WINDOW // 2)]
        stream.cancel()
        assert handle.controls[-1] == CancelMessage(1, 0)
        channel.on_stream(StreamPieceMessage(1, 0, b"after the cancel"))
        channel.on_stream(StreamEndMessage(1, 0))
        assert [p async for p in stream] == []
        assert channel.state is WorkerState.READY

    run(scenario())


def test_pieces_before_the_reply_deliver_the_stream_at_once() -> None:
    async def scenario() -> None:
        _, channel = await started(FakeScheduler())
        delivered: Delivered = {}
        events: list[str] = []
        channel.submit(streaming_dispatch(batch(1, 1), delivered, events))
        channel.on_stream(StreamPieceMessage(1, 0, b"part", HEAD))  # send_intermediate, the handler still runs
        assert delivered[0].stream is not None and events == []
        channel.on_reply(ResultMessage(1, [InferResult(200, "")], streamed=[0]))
        channel.on_stream(StreamPieceMessage(1, 0, b"final"))
        channel.on_stream(StreamEndMessage(1, 0))
        assert [p.body async for p in delivered[0].stream] == [b"part", b"final"]
        assert events == ["done", "released"]

    run(scenario())


def test_a_stream_that_ends_before_its_first_piece_is_a_plain_answer() -> None:
    async def scenario() -> None:
        _, channel = await started(FakeScheduler())
        delivered: Delivered = {}
        channel.submit(streaming_dispatch(batch(1, 2), delivered, []))
        channel.on_reply(ResultMessage(1, [InferResult(200, ""), InferResult(200, "")], streamed=[0, 1]))
        channel.on_stream(StreamEndMessage(1, 0, status=400, error="bad input", head=HEAD))
        channel.on_stream(StreamEndMessage(1, 1, head=StreamHead(200, "application/json")))
        assert delivered[0] == InferResult(400, ERROR_CONTENT_TYPE, body=b"bad input")
        assert delivered[1] == InferResult(200, "application/json")

    run(scenario())


def test_a_lost_worker_ends_its_streams_with_an_error() -> None:
    async def scenario() -> None:
        handle, channel = await started(FakeScheduler())
        delivered: Delivered = {}
        events: list[str] = []
        channel.submit(streaming_dispatch(batch(1, 2), delivered, events))
        channel.on_reply(ResultMessage(1, [InferResult(200, ""), InferResult(200, "")], streamed=[0, 1]))
        channel.on_stream(StreamPieceMessage(1, 0, b"a", HEAD))
        handle.die()
        stream = delivered[0].stream
        assert stream is not None
        pieces = [p async for p in stream]
        assert pieces[-1].content_type == ERROR_CONTENT_TYPE and b"SIGKILL" in pieces[-1].body
        assert delivered[1].content_type == ERROR_CONTENT_TYPE, "the stream that had not begun fails as a whole"
        assert events == ["done", "broke off"], "the pool hears why: the worker is lost"

    run(scenario())


def test_response_timeout_is_an_idle_limit_that_spares_a_worker_waiting_for_its_reader() -> None:
    async def scenario() -> None:
        scheduler = FakeScheduler()
        handle, channel = await started(scheduler)
        delivered: Delivered = {}
        channel.submit(streaming_dispatch(batch(1, 1), delivered, []))
        channel.on_reply(ResultMessage(1, [InferResult(200, "")], streamed=[0]))
        for i in range(STREAM_WINDOW):
            channel.on_stream(StreamPieceMessage(1, 0, b"%d" % i, HEAD if i == 0 else None))
        assert len(scheduler.armed()) == 1, "one timer, restarted by each frame"
        scheduler.fire()  # out of credit: the worker waits for the reader, not the reverse
        assert not handle.killed and len(scheduler.armed()) == 1
        stream = delivered[0].stream
        assert isinstance(stream, PieceStream)
        await take(stream, STREAM_WINDOW)  # credit again: now the silence is the handler's
        channel.submit(Dispatch(batch(2, 1), 30.0, None, lambda d, r, e: None))
        scheduler.fire()
        assert [m.batch_id for m in handle.sent] == [1], "nothing more goes to a worker about to be killed"
        pieces = [p async for p in stream]
        assert pieces[-1].content_type == ERROR_CONTENT_TYPE and pieces[-1].status == 504
        await asyncio.sleep(0)
        assert handle.killed

    run(scenario())


def test_a_reader_that_took_nothing_for_the_whole_limit_is_abandoned_and_the_worker_spared() -> None:
    async def scenario() -> None:
        scheduler = FakeScheduler()
        handle, channel = await started(scheduler)
        delivered: Delivered = {}
        events: list[str] = []
        channel.submit(streaming_dispatch(batch(1, 1), delivered, events))
        channel.on_reply(ResultMessage(1, [InferResult(200, "")], streamed=[0]))
        for i in range(STREAM_WINDOW):
            channel.on_stream(StreamPieceMessage(1, 0, b"%d" % i, HEAD if i == 0 else None))
        stream = delivered[0].stream
        assert isinstance(stream, PieceStream)
        reading = asyncio.Event()

        async def stuck_reader() -> None:
            async for _ in stream:
                reading.set()
                await asyncio.Event().wait()  # a write to a client that never reads

        reader = asyncio.ensure_future(stuck_reader())
        await reading.wait()
        scheduler.fire()  # it took a piece just now: not stalled yet
        assert not reader.done() and handle.controls == []
        stream.read_at -= 31.0  # the limit (30 s) has passed since
        scheduler.fire()
        assert handle.controls == [CancelMessage(1, 0)], "the stream is cancelled at the worker"
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert not handle.killed, "the worker is not at fault"
        channel.on_stream(StreamEndMessage(1, 0))
        assert events == ["done", "released"], "the worker is free once it has ended the stream"

    run(scenario())


def test_aborting_ends_open_streams_with_503_and_cancels_them_at_the_worker() -> None:
    async def scenario() -> None:
        handle, channel = await started(FakeScheduler())
        delivered: Delivered = {}
        events: list[str] = []
        channel.submit(streaming_dispatch(batch(1, 1), delivered, events))
        channel.on_reply(ResultMessage(1, [InferResult(200, "")], streamed=[0]))
        channel.on_stream(StreamPieceMessage(1, 0, b"a", HEAD))
        channel.abort_streams("shutting down")
        assert handle.controls == [CancelMessage(1, 0)]
        stream = delivered[0].stream
        assert stream is not None
        assert [(p.status, p.body) async for p in stream] == [(200, b"a"), (503, b"shutting down")]
        channel.on_stream(StreamEndMessage(1, 0))
        assert events == ["done", "released"]

    run(scenario())
