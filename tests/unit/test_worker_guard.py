"""The worker's one guarded decode: whatever a request makes a decoder raise answers that request alone, with a 4xx."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from modelserve.batching.types import InferRequest, Protocol
from modelserve.handler import Context
from modelserve.protocols import torchserve
from modelserve.workers import main
from modelserve.workers.protocol import InferMessage, InitMessage


def make_worker(outputs: list[Any] | None = None) -> main.Worker:
    init = InitMessage(
        model_name="m", model_version="1", model_dir=".", handler="echo", manifest={}, model_config={},
        batch_size=8, intra_op_threads=1, worker_id="w",
    )  # fmt: skip
    worker = main.Worker(main.Channel(None), init)  # type: ignore[arg-type]  # run_batch never touches the channel

    def echo(data: list[dict[str, Any]], context: Context) -> list[Any]:
        return outputs if outputs is not None else [item.get("data") for item in data]

    worker.handle = echo
    return worker


def request(body: bytes, content_type: str = "application/json", protocol: Protocol = Protocol.TORCHSERVE) -> Any:
    return InferRequest("r", content_type, {}, body, protocol.value)


@pytest.mark.parametrize(
    ("raised", "status"),
    [
        (RecursionError("maximum recursion depth exceeded"), 400),
        (OverflowError("int too large to convert"), 400),
        (ValueError("bad"), 400),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 400),
        (KeyError("a bug of ours"), 400),
        (MemoryError(), 507),
    ],
)
def test_any_decode_exception_is_that_requests_error(
    monkeypatch: pytest.MonkeyPatch, raised: BaseException, status: int
) -> None:
    def explode(_: InferRequest) -> dict[str, Any]:
        raise raised

    monkeypatch.setattr(torchserve.CODEC, "decode", explode)
    result = main.decode_guarded(request(b"{}"), torchserve.CODEC)
    assert not isinstance(result, dict)
    assert result.status == status


def test_a_bad_request_fails_alone_and_its_batch_neighbours_answer() -> None:
    worker = make_worker()
    batch = InferMessage(
        batch_id=1,
        requests=[
            request(b"[" * 5000 + b"]" * 5000),  # RecursionError in the parser on 090138f: the whole worker died
            request(b'{"ok": 1}'),
            request(b"x", "multipart/form-data; boundary=\u00e9"),
            request(
                b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": '
                b'[{"name": "y", "parameters": [1]}]}',
                protocol=Protocol.OIP_V2,
            ),
        ],
    )
    reply = worker.run_batch(batch)
    assert [r.status for r in reply.results] == [400, 200, 400, 400]
    assert json.loads(reply.results[1].body) == {"ok": 1}
    assert b"deeper than" in reply.results[0].body
    assert b"boundary" in reply.results[2].body
    assert b"'parameters'" in reply.results[3].body


def test_a_result_the_protocol_cannot_carry_fails_that_request_only() -> None:
    class Unencodable:
        def tolist(self) -> Any:
            raise AttributeError("broken tolist")

    worker = make_worker(outputs=[Unencodable(), {"x": math.nan}])
    body = b'{"instances": [1]}'
    batch = InferMessage(batch_id=2, requests=[request(body, protocol=Protocol.KSERVE_V1)] * 2)
    reply = worker.run_batch(batch)
    assert [r.status for r in reply.results] == [500, 200]
    assert b"cannot be encoded" in reply.results[0].body
    assert json.loads(reply.results[1].body) == {"predictions": {"x": None}}


def test_a_failure_outside_the_guards_fails_the_batch_not_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = make_worker()

    def broken(_: InferMessage) -> Any:
        raise AttributeError("a bug in the batch loop")

    monkeypatch.setattr(worker, "run_batch", broken)
    reply = main._answer(worker, InferMessage(batch_id=3, requests=[request(b"{}")] * 2))
    assert reply.batch_id == 3
    assert [r.status for r in reply.results] == [500, 500]
    assert b"AttributeError" in reply.results[0].body
