"""Each protocol codec on its own: decode and encode round trips, the OIP binary extension, bad input as the typed
400 error, the protocol's error document, and the table that finds a codec."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from modelserve.batching.types import ERROR_CONTENT_TYPE, InferRequest, Protocol
from modelserve.handler import BadInputError, ResponseInfo
from modelserve.protocols import CODECS, codec_for_path, kserve_v1, oip, torchserve
from modelserve.protocols.codec import ModelTarget
from modelserve.protocols.oip_tensors import HEADER_LENGTH

MODEL = ModelTarget("m", "1.0", ("y",))
JSON = "application/json"


def ts_request(body: bytes, content_type: str) -> InferRequest:
    return InferRequest("r", content_type, {"content-type": content_type}, body, Protocol.TORCHSERVE.value)


# ---- the table ------------------------------------------------------------------------------------------------


def test_every_protocol_has_its_codec() -> None:
    assert {p.value: CODECS[p.value].protocol for p in Protocol} == {p.value: p for p in Protocol}


@pytest.mark.parametrize(
    ("path", "protocol"),
    [
        ("/v2/models/m/infer", Protocol.OIP_V2),
        ("/v2/repository/index", Protocol.OIP_V2),
        ("/v1/models/m:predict", Protocol.KSERVE_V1),
        ("/predictions/m", Protocol.TORCHSERVE),
        ("/models", Protocol.TORCHSERVE),
        ("/nothing/v2", Protocol.TORCHSERVE),
    ],
)
def test_a_path_answers_errors_in_its_protocols_shape(path: str, protocol: Protocol) -> None:
    assert codec_for_path(path).protocol is protocol


def test_the_codecs_load_without_numpy_or_multipart() -> None:
    # the server process imports the codecs; numpy and python-multipart are for workers only
    code = (
        "import sys, modelserve.protocols; print(sorted(m for m in ('numpy', 'python_multipart') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert loaded.stdout.strip() == "[]"


# ---- TorchServe -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "content_type", "body"),
    [
        (b"\x00raw", "application/octet-stream", b"\x00raw"),
        ("t\u00e9xt", "text/plain; charset=utf-8", "t\u00e9xt".encode()),
        ({"a": [1, 2]}, JSON, b'{"a": [1, 2]}'),
        (np.array([1.5, 2.0]), JSON, b"[1.5, 2.0]"),
    ],
)
def test_torchserve_encodes_bytes_raw_text_as_text_and_the_rest_as_json(
    output: Any, content_type: str, body: bytes
) -> None:
    result = torchserve.CODEC.encode(output, {}, ResponseInfo(), MODEL)
    assert (result.status, result.content_type, result.body) == (200, content_type, body)


@pytest.mark.parametrize(
    ("body", "content_type", "data"),
    [
        (b'{"a": 1}', JSON, {"a": 1}),
        (b"hello", "text/plain", "hello"),
        (b"\xff\x00", "application/octet-stream", b"\xff\x00"),
    ],
)
def test_torchserve_round_trips_what_an_echo_handler_sends_back(body: bytes, content_type: str, data: Any) -> None:
    item = torchserve.CODEC.decode(ts_request(body, content_type))
    assert item == {"body": data, "data": data}
    assert torchserve.CODEC.encode(item["data"], item, ResponseInfo(), MODEL).body == body


def test_torchserve_decodes_forms_and_multipart_fields_by_name() -> None:
    assert torchserve.CODEC.decode(ts_request(b"a=1&b=x+y", "application/x-www-form-urlencoded")) == {
        "a": b"1",
        "b": b"x y",
    }
    body = b'--B\r\nContent-Disposition: form-data; name="f"; filename="f.bin"\r\n\r\n\x01\x02\r\n--B--\r\n'
    item = torchserve.CODEC.decode(ts_request(body, "multipart/form-data; boundary=B"))
    assert item["f"] == item["data"] == b"\x01\x02"


@pytest.mark.parametrize(
    ("body", "content_type", "match"),
    [
        (b"{nope", JSON, "not valid JSON"),
        (b"x", "multipart/form-data", "boundary"),
        (b"--B\r\n\r\nno disposition\r\n--B--\r\n", "multipart/form-data; boundary=B", "Content-Disposition"),
    ],
)
def test_torchserve_bad_bodies_are_bad_input(body: bytes, content_type: str, match: str) -> None:
    with pytest.raises(BadInputError, match=match):
        torchserve.CODEC.decode(ts_request(body, content_type))


def test_torchserve_the_handlers_status_headers_and_content_type_win() -> None:
    response = ResponseInfo(status=201, content_type="image/png", headers={"X-A": "1"})
    result = torchserve.CODEC.encode(b"png", {}, response, MODEL)
    assert (result.status, result.content_type, result.headers, result.body) == (201, "image/png", {"X-A": "1"}, b"png")


def test_torchserve_intermediate_parts_come_first_unless_the_answer_is_an_error() -> None:
    response = ResponseInfo(parts=["a", b"b", {"c": 1}])
    assert torchserve.CODEC.encode("end", {}, response, MODEL).body == b'ab{"c": 1}end'
    response.status = 500
    assert torchserve.CODEC.encode("end", {}, response, MODEL).body == b"end"


@pytest.mark.parametrize("parts", [[], [object()]])
def test_torchserve_an_unsendable_output_or_part_is_that_requests_500(parts: list[Any]) -> None:
    output = object() if not parts else "fine"
    result = torchserve.CODEC.encode(output, {}, ResponseInfo(parts=parts), MODEL)
    assert (result.status, result.content_type) == (500, ERROR_CONTENT_TYPE)
    assert b"cannot be sent" in result.body


def test_torchserve_errors_are_code_type_message() -> None:
    assert torchserve.CODEC.error_document(404, "gone") == {
        "code": 404,
        "type": "ModelNotFoundException",
        "message": "gone",
    }
    assert torchserve.CODEC.error_document(418, "odd")["type"] == "ServerException"
    assert torchserve.CODEC.error_document(404, "v", "ModelVersionNotFoundException")["type"] == (
        "ModelVersionNotFoundException"
    )


# ---- KServe v1 ------------------------------------------------------------------------------------------------


def v1_request(body: bytes) -> InferRequest:
    return InferRequest("r", JSON, {}, body, Protocol.KSERVE_V1.value)


def test_kserve_v1_round_trip_instances_to_predictions() -> None:
    item = kserve_v1.CODEC.decode(v1_request(b'{"instances": [[1, 2]]}'))
    assert item["data"] == {"instances": [[1, 2]]}
    result = kserve_v1.CODEC.encode(np.array(item["data"]["instances"]) * 2, item, ResponseInfo(), MODEL)
    assert (result.status, result.content_type) == (200, JSON)
    assert json.loads(result.body) == {"predictions": [[2, 4]]}


@pytest.mark.parametrize("body", [b"[1]", b'{"rows": []}', b'{"instances": 1}', b"{bad"])
def test_kserve_v1_without_an_instances_list_is_bad_input(body: bytes) -> None:
    with pytest.raises(BadInputError):
        kserve_v1.CODEC.decode(v1_request(body))


def test_kserve_v1_a_handlers_error_status_is_the_protocols_error() -> None:
    result = kserve_v1.CODEC.encode("ignored", {}, ResponseInfo(status=422, reason="not a cat"), MODEL)
    assert (result.status, result.content_type, result.body) == (422, ERROR_CONTENT_TYPE, b"not a cat")


def test_kserve_v1_an_output_json_cannot_carry_is_that_requests_500() -> None:
    result = kserve_v1.CODEC.encode([object()], {}, ResponseInfo(), MODEL)
    assert (result.status, result.content_type) == (500, ERROR_CONTENT_TYPE)
    assert b"cannot be encoded" in result.body


def test_kserve_v1_explain_renames_predictions_only() -> None:
    result = kserve_v1.CODEC.encode([0.5], {}, ResponseInfo(), MODEL)
    assert json.loads(kserve_v1.CODEC.explanations(result).body) == {"explanations": [0.5]}
    other = torchserve.CODEC.encode({"predictions": 1, "more": 2}, {}, ResponseInfo(), MODEL)
    assert kserve_v1.CODEC.explanations(other) is other


def test_kserve_errors_are_an_error_string() -> None:
    assert kserve_v1.CODEC.error_document(400, "bad", "BadRequestException") == {"error": "bad"}
    assert oip.CODEC.error_document(503, "busy") == {"error": "busy"}


# ---- Open Inference Protocol ----------------------------------------------------------------------------------


def oip_request(body: bytes, headers: dict[str, str] | None = None) -> InferRequest:
    return InferRequest("r", JSON, headers or {}, body, Protocol.OIP_V2.value)


def test_oip_json_round_trip() -> None:
    document = {"id": "q", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]}
    item = oip.CODEC.decode(oip_request(json.dumps(document).encode()))
    x = item["data"]["inputs"]["x"]
    assert (x.dtype, x.shape) == (np.float32, (2, 2))
    result = oip.CODEC.encode({"y": x * 2}, item, ResponseInfo(), MODEL)
    assert (result.status, result.content_type, result.headers) == (200, JSON, {})
    assert json.loads(result.body) == {
        "model_name": "m",
        "model_version": "1.0",
        "id": "q",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [2, 2], "data": [2.0, 4.0, 6.0, 8.0]}],
    }


def test_oip_binary_extension_round_trip() -> None:
    header = json.dumps({
        "inputs": [{"name": "x", "datatype": "INT32", "shape": [3], "parameters": {"binary_data_size": 12}}],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip
    item = oip.CODEC.decode(oip_request(header + struct.pack("<3i", 1, -2, 3), {HEADER_LENGTH: str(len(header))}))
    assert item["data"]["inputs"]["x"].tolist() == [1, -2, 3]
    result = oip.CODEC.encode(item["data"]["inputs"]["x"], item, ResponseInfo(), MODEL)
    assert result.content_type == "application/octet-stream"
    length = int(result.headers["Inference-Header-Content-Length"])
    described = json.loads(result.body[:length])["outputs"][0]
    assert described == {"name": "y", "datatype": "INT32", "shape": [3], "parameters": {"binary_data_size": 12}}
    assert struct.unpack("<3i", result.body[length:]) == (1, -2, 3)


@pytest.mark.parametrize(
    ("body", "headers", "match"),
    [
        (b"{nope", {}, "not valid JSON"),
        (b'{"inputs": []}', {}, "non-empty 'inputs'"),
        (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [1]}]}', {}, "needs 3 values"),
        (b'{"inputs": [{"name": "x", "datatype": "FP9", "shape": [1], "data": [1]}]}', {}, "unsupported datatype"),
        (b"{}", {HEADER_LENGTH: "99"}, "exceeds the body"),
    ],
)
def test_oip_bad_requests_are_bad_input(body: bytes, headers: dict[str, str], match: str) -> None:
    with pytest.raises(BadInputError, match=match):
        oip.CODEC.decode(oip_request(body, headers))


def test_oip_an_unknown_output_asked_for_is_that_requests_400() -> None:
    document = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": [{"name": "z"}]}
    item = oip.CODEC.decode(oip_request(json.dumps(document).encode()))
    result = oip.CODEC.encode(np.ones(1), item, ResponseInfo(), MODEL)
    assert (result.status, result.content_type) == (400, ERROR_CONTENT_TYPE)
    assert b"unknown output" in result.body


def test_oip_an_output_without_a_datatype_is_that_requests_500() -> None:
    item = oip.CODEC.decode(oip_request(b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}'))
    result = oip.CODEC.encode(np.array([1 + 2j]), item, ResponseInfo(), MODEL)
    assert (result.status, result.content_type) == (500, ERROR_CONTENT_TYPE)
    assert b"cannot be encoded" in result.body
