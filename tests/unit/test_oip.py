"""Open Inference Protocol decoding of untrusted requests (only BadInputError comes out) and output naming."""

from __future__ import annotations

import contextlib
import json
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelserve.handler import BadInputError
from modelserve.protocols.oip_tensors import HEADER_LENGTH, MAX_DIMS, decode_request, encode_response


def request(inputs: list[Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": inputs, **extra}).encode()


ONE = {"name": "x", "datatype": "FP32", "shape": [2], "data": [1, 2]}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # each of these killed the worker on 090138f
        (request([{"name": "x", "datatype": "FP32", "shape": [4611686018427387904, 4], "data": []}]), "'shape'"),
        (request([{"name": "x", "datatype": "FP32", "shape": [1] * 65, "data": [1]}]), "'shape' has 65 dimensions"),
        (request([ONE], outputs=[{"name": "y", "parameters": [1]}]), "output 'y': 'parameters'"),
        (b'{"inputs": ' + b"[" * 1000 + b"]" * 1000 + b"}", "deeper than"),
        # and these were let through or misread
        (request([{**ONE, "parameters": [1]}]), "input 'x': 'parameters'"),
        (request([ONE], parameters="binary"), "request: 'parameters'"),
        (request([{"name": "x", "datatype": "FP32", "shape": [0, 2**62], "data": []}]), "'shape'"),
        (request([{"name": "x", "datatype": "FP32", "shape": [1] * (MAX_DIMS + 1), "data": [1]}]), "dimensions"),
        (
            request([{"name": "x", "datatype": "BOOL", "shape": [1], "parameters": {"binary_data_size": True}}]),
            "binary_data_size",
        ),
    ],
)
def test_bad_requests_are_bad_inputs_naming_the_field(body: bytes, field: str) -> None:
    with pytest.raises(BadInputError, match=field.replace("[", r"\[").replace("(", r"\(")):
        decode_request(body, {})


def test_a_shape_at_the_dimension_limit_decodes() -> None:
    item = decode_request(request([{"name": "x", "datatype": "INT8", "shape": [1] * MAX_DIMS, "data": [3]}]), {})
    assert item["data"]["inputs"]["x"].shape == (1,) * MAX_DIMS


@pytest.mark.parametrize("value", ["12x", "-1", " ", "\u0661\u0662", "99999"])
def test_a_bad_header_length_is_a_bad_input(value: str) -> None:
    with pytest.raises(BadInputError, match="Inference-Header-Content-Length"):
        decode_request(request([ONE]), {HEADER_LENGTH: value})


def test_binary_tensors_decode() -> None:
    header = request([{"name": "x", "datatype": "INT32", "shape": [2], "parameters": {"binary_data_size": 8}}])
    item = decode_request(header + struct.pack("<2i", 7, -1), {HEADER_LENGTH: str(len(header))})
    assert item["data"]["inputs"]["x"].tolist() == [7, -1]


def outputs_requested(names: list[str]) -> dict[str, Any]:
    item = decode_request(request([ONE], outputs=[{"name": n} for n in names]), {})
    oip: dict[str, Any] = item["oip"]
    return oip


def test_outputs_are_named_as_the_metadata_names_them() -> None:
    # a handler that does not know the names (TensorHandler with a TorchScript model) answers output_0
    body, _, _ = encode_response({"output_0": np.ones(2)}, outputs_requested([]), "m", "1", ["y"])
    assert [o["name"] for o in json.loads(body)["outputs"]] == ["y"]


def test_the_metadata_names_can_be_requested() -> None:
    body, _, _ = encode_response({"output_0": np.ones(2)}, outputs_requested(["y"]), "m", "1", ["y"])
    assert [o["name"] for o in json.loads(body)["outputs"]] == ["y"]
    with pytest.raises(BadInputError, match="unknown output"):
        encode_response({"output_0": np.ones(2)}, outputs_requested(["nope"]), "m", "1", ["y"])


def test_a_handler_naming_the_metadata_outputs_keeps_its_order() -> None:
    result = {"b": np.zeros(1), "a": np.ones(1)}
    body, _, _ = encode_response(result, outputs_requested([]), "m", "1", ["a", "b"])
    assert [(o["name"], o["data"]) for o in json.loads(body)["outputs"]] == [("b", [0.0]), ("a", [1.0])]


def test_a_handler_with_other_outputs_than_the_metadata_keeps_its_names() -> None:
    result = {"p": np.zeros(1), "q": np.ones(1)}
    body, _, _ = encode_response(result, outputs_requested([]), "m", "1", ["y"])
    assert [o["name"] for o in json.loads(body)["outputs"]] == ["p", "q"]


def test_nan_outputs_are_valid_json() -> None:
    body, _, _ = encode_response(np.array([np.nan, np.inf, 1.0]), outputs_requested([]), "m", "1", ["y"])
    assert json.loads(body, parse_constant=pytest.fail)["outputs"][0]["data"] == [None, None, 1.0]


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
json_any = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
datatypes = st.sampled_from(["BOOL", "UINT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES", "NOPE"]) | json_any
dims = st.integers(min_value=-2, max_value=8) | st.sampled_from([2**31, 2**62, 2**63, 2**64, 10**30])
shapes = st.lists(dims, max_size=6) | st.lists(st.just(1), min_size=30, max_size=70) | json_any
parameters = (
    st.fixed_dictionaries({}, optional={"binary_data_size": st.integers(-4, 64) | json_any, "binary_data": json_any})
    | json_any
)
wild_tensors = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=4) | json_any,
        "datatype": datatypes,
        "shape": shapes,
        "data": json_any | st.lists(st.integers(-300, 300) | st.floats(), max_size=10),
        "parameters": parameters,
    },
)


@st.composite
def valid_tensors(draw: st.DrawFn) -> dict[str, Any]:
    """A well-formed JSON tensor, most of the time with one field replaced by something wild."""
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    count = int(np.prod(shape)) if shape else 1
    datatype = draw(st.sampled_from(["BOOL", "UINT8", "INT32", "FP16", "FP64", "BYTES"]))
    value = st.text(max_size=3) if datatype == "BYTES" else st.integers(0, 1)
    tensor: dict[str, Any] = {
        "name": draw(st.sampled_from(["x", "y", "z"])),
        "datatype": datatype,
        "shape": shape,
        "data": draw(st.lists(value, min_size=count, max_size=count)),
    }
    key = draw(st.sampled_from([None, "name", "datatype", "shape", "data", "parameters"]))
    if key is not None:
        tensor[key] = draw({"shape": shapes, "datatype": datatypes, "parameters": parameters}.get(key, json_any))
    return tensor


tensors = valid_tensors() | wild_tensors
wild_outputs = st.fixed_dictionaries({}, optional={"name": json_any, "parameters": parameters}) | json_any
output_requests = st.lists(
    st.fixed_dictionaries({"name": st.sampled_from(["x", "y", "output_0"])}, optional={"parameters": parameters})
    | wild_outputs,
    max_size=3,
)
documents = st.fixed_dictionaries(
    {"inputs": st.lists(tensors, min_size=1, max_size=3)},
    optional={"outputs": output_requests, "parameters": parameters, "id": json_any},
) | st.fixed_dictionaries(
    {},
    optional={"inputs": json_any, "outputs": json_any, "parameters": json_any, "id": json_any},
)


@settings(max_examples=400, deadline=None)
@given(documents, st.binary(max_size=64), st.booleans(), st.integers(-3, 3) | st.text(max_size=4))
def test_any_request_decodes_or_raises_bad_input_only(
    document: dict[str, Any], binary: bytes, send_header_length: bool, length_skew: int | str
) -> None:
    header = json.dumps(document).encode()
    headers = {}
    if send_header_length:
        headers[HEADER_LENGTH] = str(len(header) + length_skew) if isinstance(length_skew, int) else length_skew
    try:
        item = decode_request(header + binary if send_header_length else header, headers)
    except BadInputError:
        return
    # what decodes can also be answered: an echo of the inputs, in JSON or binary as asked
    for arrays in (item["data"]["inputs"], list(item["data"]["inputs"].values())):
        with contextlib.suppress(BadInputError):
            encode_response(arrays, item["oip"], "m", "1", [])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.text(max_size=6))
def test_any_bytes_decode_or_raise_bad_input_only(body: bytes, header_length: str) -> None:
    for headers in ({}, {HEADER_LENGTH: header_length}):
        with contextlib.suppress(BadInputError):
            decode_request(body, headers)
