"""The wire protocol: frames round-trip, bodies travel as raw bytes, broken frames are typed errors."""

from __future__ import annotations

import json

import pytest

from modelserve.batching.types import InferRequest, InferResult
from modelserve.workers.protocol import (
    LENGTH,
    CancelMessage,
    CreditMessage,
    InferMessage,
    InitMessage,
    MessageType,
    ProtocolError,
    ResultMessage,
    StreamEndMessage,
    StreamHead,
    StreamPieceMessage,
    decode,
    encode,
)


def roundtrip(message: object) -> object:
    frame = b"".join(encode(message))  # type: ignore[arg-type]
    (length,) = LENGTH.unpack_from(frame)
    assert length == len(frame) - LENGTH.size
    return decode(frame[LENGTH.size], frame[LENGTH.size + 1 :])


def test_batch_round_trips_with_binary_bodies() -> None:
    message = InferMessage(
        batch_id=7,
        requests=[
            InferRequest("a", "image/png", {"x-h": "1"}, bytes(range(256))),
            InferRequest("b", "", {}, b""),
            InferRequest("c", "application/json", {}, b'{"k": [1, 2]}'),
        ],
    )
    assert roundtrip(message) == message


def test_bodies_are_separate_buffers_not_copied_into_the_header() -> None:
    body = b"\x00" * 100_000
    parts = encode(InferMessage(batch_id=1, requests=[InferRequest("a", "", {}, body)]))
    assert parts[-1] is body
    assert len(parts[1]) < 200


def test_results_and_init_round_trip() -> None:
    result = ResultMessage(
        batch_id=3,
        results=[InferResult(200, "application/json", {"h": "v"}, b"[1]"), InferResult(400, "x", {}, b"bad")],
        timings={"inference": 0.5},
        metrics=[{"kind": "counter", "name": "n", "value": 1.0, "labels": {}, "description": ""}],
    )
    assert roundtrip(result) == result
    init = InitMessage("m", "1.0", "/tmp/m", "h.py", {"model": {}}, {"batchSize": 2}, 2, 1, "m-1")
    assert roundtrip(init) == init


def test_broken_frames_raise_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        decode(99, b"\x00\x00\x00\x02{}")
    with pytest.raises(ProtocolError):
        decode(4, b"\x00\x00\x00\x05{bad")
    frame = b"".join(encode(InferMessage(batch_id=1, requests=[InferRequest("a", "", {}, b"abc")])))
    with pytest.raises(ProtocolError, match="length"):
        decode(frame[4], frame[5:-1])


def test_stream_frames_round_trip() -> None:
    head = StreamHead(201, "text/plain", {"x-a": "1"})
    first = StreamPieceMessage(batch_id=4, index=1, body=bytes(range(256)), head=head)
    assert roundtrip(first) == first
    later = StreamPieceMessage(batch_id=4, index=1, body=b"")
    assert roundtrip(later) == later
    end = StreamEndMessage(batch_id=4, index=1)
    assert roundtrip(end) == end
    failed = StreamEndMessage(batch_id=4, index=0, status=500, error="ValueError: boom", head=head)
    assert roundtrip(failed) == failed
    assert roundtrip(CreditMessage(batch_id=4, index=2, count=8)) == CreditMessage(4, 2, 8)
    assert roundtrip(CancelMessage(batch_id=4, index=0)) == CancelMessage(4, 0)
    streamed = ResultMessage(batch_id=4, results=[InferResult(200, ""), InferResult(200, "x", {}, b"y")], streamed=[0])
    assert roundtrip(streamed) == streamed


def test_a_piece_body_is_its_own_buffer() -> None:
    body = b"\x01" * 50_000
    parts = encode(StreamPieceMessage(batch_id=1, index=0, body=body))
    assert parts[-1] is body


def frame_of(kind: MessageType, header: dict[str, object], *blobs: bytes) -> tuple[int, bytes]:
    header = {**header, "blob_sizes": [len(b) for b in blobs]}
    raw = json.dumps(header).encode()
    return kind, LENGTH.pack(len(raw)) + raw + b"".join(blobs)


@pytest.mark.parametrize(
    "frame",
    [
        frame_of(MessageType.STREAM_PIECE, {"batch_id": 1, "index": 0}),  # no body blob
        frame_of(MessageType.STREAM_PIECE, {"batch_id": 1, "index": -1}, b"x"),
        frame_of(MessageType.STREAM_PIECE, {"batch_id": 1, "index": 0, "head": [1]}, b"x"),
        frame_of(MessageType.STREAM_PIECE, {"batch_id": 1, "index": 0, "head": {"status": "ok"}}, b"x"),
        frame_of(MessageType.STREAM_PIECE, {"batch_id": "1", "index": 0}, b"x"),
        frame_of(MessageType.STREAM_END, {"batch_id": 1, "index": 0}, b"body"),
        frame_of(MessageType.STREAM_END, {"batch_id": 1}),
        frame_of(MessageType.CREDIT, {"batch_id": 1, "index": 0}),
        frame_of(MessageType.CREDIT, {"batch_id": 1, "index": 0, "count": True}),
        frame_of(MessageType.CANCEL, {"batch_id": 1, "index": 0, "extra": 1}),
        frame_of(MessageType.RESULT, {"batch_id": 1, "results": [], "streamed": ["a"]}),
    ],
)
def test_broken_stream_frames_raise_protocol_error(frame: tuple[int, bytes]) -> None:
    with pytest.raises(ProtocolError):
        decode(*frame)
