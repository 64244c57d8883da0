"""TorchServe's request envelopes read bodies as untrusted JSON: what is not JSON, or nests too deep, is a 400-class
BadInputError (never a RecursionError or a 500); the json envelope writes valid JSON (non-finite floats as null)."""

from __future__ import annotations

import importlib
import json
import math
from typing import Any

import pytest

from modelserve.handler import BadInputError, Context, RequestInfo
from modelserve.tscompat import expose_ts_package

DEEP = b"[" * 5000 + b"]" * 5000


@pytest.fixture(scope="module", autouse=True)
def ts_on_path() -> None:
    expose_ts_package()


def envelope(module: str, result: Any = None) -> Any:
    classes = {"json": "JSONEnvelope", "kserve": "KServeEnvelope", "kservev2": "KServev2Envelope"}
    loaded = importlib.import_module(f"ts.torch_handler.request_envelope.{module}")
    return getattr(loaded, classes[module])(lambda data, context: result if result is not None else data)


def context() -> Context:
    ctx = Context("m", "1.0", "/nonexistent", {"model": {"modelName": "m"}}, 4, {}, 1)
    ctx.begin_batch([RequestInfo("r0", {}, "")])
    return ctx


@pytest.mark.parametrize("module", ["json", "kserve", "kservev2"])
@pytest.mark.parametrize("body", [DEEP, b'{"instances": ' + DEEP + b"}", b"\xff\xfe not json", b"{"])
def test_a_body_that_is_no_json_is_a_bad_input(module: str, body: bytes) -> None:
    with pytest.raises(BadInputError, match="not valid JSON"):
        envelope(module).handle([{"body": body}], context())


def test_the_json_envelope_writes_nan_as_null() -> None:
    (answer,) = envelope("json", result=[math.nan]).handle([{"body": b'{"instances": [1]}'}], context())
    assert json.loads(answer, parse_constant=pytest.fail) == {"predictions": [None]}
