"""The worker's side of streams, in this process over a socket pair (no worker process): results first, then the
streams' pieces round-robin, at most the window ahead of the credit, a cancel closing the generator, an error
ending its stream, batches that arrive meanwhile kept for later."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from modelserve.batching.types import InferRequest
from modelserve.handler import Context
from modelserve.workers.main import Channel, Worker
from modelserve.workers.protocol import (
    STREAM_WINDOW,
    CancelMessage,
    CreditMessage,
    InferMessage,
    InitMessage,
    Message,
    ResultMessage,
    StreamEndMessage,
    StreamPieceMessage,
)

Handle = Any


@pytest.fixture
def pair() -> Iterator[tuple[Channel, Channel]]:
    worker_end, parent_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    parent_end.settimeout(10)
    yield Channel(worker_end), Channel(parent_end)
    worker_end.close()
    parent_end.close()


def worker_with(channel: Channel, handle: Handle) -> Worker:
    worker = Worker(channel, InitMessage("m", "1.0", "/nowhere", "h", {}, {}, 4, 1, "w-1"))
    worker.handle = handle
    return worker


def answer(worker: Worker, message: InferMessage) -> threading.Thread:
    """What the worker's loop does with one batch, in a thread: the RESULT frame, then the streams."""

    def body() -> None:
        worker.channel.send(worker.run_batch(message))
        worker.run_streams()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def batch(count: int, batch_id: int = 1) -> InferMessage:
    return InferMessage(batch_id, [InferRequest(f"r{i}", "text/plain", {}, b"x") for i in range(count)])


def receive(parent: Channel, count: int) -> list[Message]:
    return [parent.receive() for _ in range(count)]


def test_results_first_then_pieces_round_robin_within_the_credit(pair: tuple[Channel, Channel]) -> None:
    worker_end, parent = pair
    yielded: dict[str, int] = {"a": 0, "b": 0}

    def pieces(name: str, total: int) -> Iterator[Any]:
        for i in range(total):
            yielded[name] += 1
            yield {"name": name, "i": i} if name == "b" else f"{name}{i}"

    def handle(data: list[dict[str, Any]], context: Context) -> list[Any]:
        return [pieces("a", 20), "plain", pieces("b", 3)]

    thread = answer(worker_with(worker_end, handle), batch(3))
    result = parent.receive()
    assert isinstance(result, ResultMessage) and result.streamed == [0, 2]
    assert result.results[1].body == b"plain"
    frames = receive(parent, 6)
    assert [(getattr(f, "index", None), type(f).__name__) for f in frames] == [
        (0, "StreamPieceMessage"), (2, "StreamPieceMessage"),
        (0, "StreamPieceMessage"), (2, "StreamPieceMessage"),
        (0, "StreamPieceMessage"), (2, "StreamPieceMessage"),
    ], "the streams take turns"  # fmt: skip
    first = frames[0]
    assert isinstance(first, StreamPieceMessage) and first.head is not None
    assert first.head.content_type == "text/plain; charset=utf-8" and first.body == b"a0"
    json_piece = frames[1]
    assert isinstance(json_piece, StreamPieceMessage) and json.loads(json_piece.body) == {"name": "b", "i": 0}
    rest = receive(parent, 2 + STREAM_WINDOW - 4)  # a3, b's end, then a goes on until its credit is used
    assert isinstance(rest[1], StreamEndMessage) and rest[1].index == 2
    assert all(isinstance(f, StreamPieceMessage) and f.index == 0 for f in [rest[0], *rest[2:]])
    thread.join(0.3)
    assert thread.is_alive() and yielded["a"] == STREAM_WINDOW, "out of credit, the generator is not advanced"
    parent.send(CreditMessage(1, 0, 100))
    tail = receive(parent, 20 - STREAM_WINDOW + 1)
    assert [f.body for f in tail[:-1] if isinstance(f, StreamPieceMessage)][-1] == b"a19"
    assert isinstance(tail[-1], StreamEndMessage) and tail[-1].error == ""
    thread.join(5)
    assert not thread.is_alive()


def test_a_cancel_closes_the_generator_and_a_batch_that_came_meanwhile_waits(pair: tuple[Channel, Channel]) -> None:
    worker_end, parent = pair
    closed = threading.Event()

    def endless() -> Iterator[bytes]:
        try:
            while True:
                yield b"."
        finally:
            closed.set()

    def handle(data: list[dict[str, Any]], context: Context) -> list[Any]:
        return [endless()]

    worker = worker_with(worker_end, handle)
    thread = answer(worker, batch(1))
    assert isinstance(parent.receive(), ResultMessage)
    receive(parent, STREAM_WINDOW)
    parent.send(batch(1, batch_id=2))
    parent.send(CancelMessage(1, 0))
    end = parent.receive()
    assert isinstance(end, StreamEndMessage) and end.index == 0
    thread.join(5)
    assert closed.is_set(), "the generator's finally ran"
    assert [type(m).__name__ for m in worker.queued] == ["InferMessage"]


def test_an_error_mid_stream_ends_it_with_the_error(pair: tuple[Channel, Channel]) -> None:
    worker_end, parent = pair

    def failing() -> Iterator[str]:
        yield "one"
        raise ValueError("broke at two")

    def handle(data: list[dict[str, Any]], context: Context) -> list[Any]:
        return [failing()]

    thread = answer(worker_with(worker_end, handle), batch(1))
    frames = receive(parent, 3)
    end = frames[2]
    assert isinstance(end, StreamEndMessage)
    assert end.status == 500 and "ValueError: broke at two" in end.error
    thread.join(5)


def test_send_intermediate_streams_before_the_result(pair: tuple[Channel, Channel]) -> None:
    worker_end, parent = pair

    def handle(data: list[dict[str, Any]], context: Context) -> list[Any]:
        for step in range(STREAM_WINDOW + 2):  # more than the window: it waits for credit inside the handler
            context.send_intermediate(0, f"part {step};")
        return ["done"]

    thread = answer(worker_with(worker_end, handle), batch(1))
    early = receive(parent, STREAM_WINDOW)
    assert all(isinstance(f, StreamPieceMessage) for f in early)
    parent.send(CreditMessage(1, 0, 100))
    frames = receive(parent, 2 + 1 + 2)  # two more parts, the RESULT, the final piece, the end
    assert [type(f).__name__ for f in frames] == [
        "StreamPieceMessage", "StreamPieceMessage", "ResultMessage", "StreamPieceMessage", "StreamEndMessage",
    ]  # fmt: skip
    final = frames[3]
    assert isinstance(final, StreamPieceMessage) and final.body == b"done"
    thread.join(5)
