"""The wire protocol: frames round-trip, bodies travel as raw bytes, broken frames are typed errors."""

from __future__ import annotations

import pytest

from modelserve.batching.types import InferRequest, InferResult
from modelserve.workers.protocol import (
    LENGTH,
    InferMessage,
    InitMessage,
    ProtocolError,
    ResultMessage,
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
