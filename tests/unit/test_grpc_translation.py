"""The gRPC front's rewriting, without a server: a ModelInferRequest becomes the OIP binary body the worker's codec
decodes into the same arrays, the codec's answer becomes a ModelInferResponse with the same tensors, and a
PredictionsRequest's input map becomes the form fields a TorchServe handler gets."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from modelserve.batching.types import InferResult
from modelserve.protocols import torchserve
from modelserve.protocols.oip_tensors import decode_request, encode_response
from modelserve.server.grpc_common import RpcFailure, code_for, parse
from modelserve.server.grpc_oip import request_body, response_message
from modelserve.server.grpc_torchserve import form_body
from modelserve.server.protos import oip_pb2 as pb

DTYPES = {
    "BOOL": "bool", "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64", "INT8": "int8",
    "INT16": "int16", "INT32": "int32", "INT64": "int64", "FP16": "float16", "FP32": "float32", "FP64": "float64",
}  # fmt: skip
TYPED_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
               "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
               "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
               "FP64": "fp64_contents"}  # fmt: skip


def samples() -> dict[str, np.ndarray]:
    values = {name: (np.arange(6).reshape(2, 3) % 2).astype(dtype) if name == "BOOL"
              else (np.arange(6).reshape(2, 3) + (0 if name.startswith("UINT") else -2)).astype(dtype)
              for name, dtype in DTYPES.items()}  # fmt: skip
    values["BYTES"] = np.asarray([[b"a", b"\xff\x00", b""], [b"ccc", b"d", b"e"]], dtype=object)
    return values


def serialized(array: np.ndarray) -> bytes:
    if array.dtype == object:
        return b"".join(struct.pack("<I", len(v)) + v for v in array.reshape(-1))
    return array.tobytes()


def decoded(request: Any) -> dict[str, Any]:
    body, headers = request_body(parse(pb.ModelInferRequest, request.SerializeToString()))
    return decode_request(body, headers)


def test_raw_inputs_of_every_datatype_reach_the_worker_as_the_same_arrays() -> None:
    request = pb.ModelInferRequest(model_name="m", id="42")
    for name, array in samples().items():
        request.inputs.add(name=f"x_{name}", datatype=name, shape=list(array.shape))
        request.raw_input_contents.append(serialized(array))
    request.outputs.add(name="y_FP32")
    item = decoded(request)
    for name, array in samples().items():
        got = item["data"]["inputs"][f"x_{name}"]
        assert got.shape == array.shape and array.dtype in (object, got.dtype), name
        assert got.tolist() == array.tolist(), name
    assert item["oip"]["id"] == "42"
    assert item["oip"]["parameters"]["binary_data_output"] is True
    assert item["oip"]["outputs"] == [{"name": "y_FP32", "parameters": {"binary_data": True}}]


def test_typed_contents_reach_the_worker_as_the_same_arrays() -> None:
    request = pb.ModelInferRequest(model_name="m")
    values = {k: v for k, v in samples().items() if k != "FP16"}
    for name, array in values.items():
        tensor = request.inputs.add(name=f"x_{name}", datatype=name, shape=list(array.shape))
        field = "bytes_contents" if name == "BYTES" else TYPED_FIELD[name]
        getattr(tensor.contents, field).extend(array.reshape(-1).tolist())
    item = decoded(request)
    for name, array in values.items():
        assert item["data"]["inputs"][f"x_{name}"].tolist() == array.tolist(), name


@pytest.mark.parametrize(
    ("change", "text"),
    [
        (lambda r: r.raw_input_contents.append(b"\0" * 4), "raw_input_contents has 2 entries for 1 inputs"),
        (lambda r: r.inputs[0].contents.fp32_contents.append(1.0), "has contents and raw_input_contents"),
    ],
)
def test_raw_and_typed_contents_do_not_mix(change: Any, text: str) -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1])
    request.raw_input_contents.append(b"\0" * 4)
    change(request)
    with pytest.raises(RpcFailure, match=text) as caught:
        request_body(request)
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT


def test_typed_values_that_do_not_fit_are_invalid_arguments() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="INT8", shape=[1]).contents.int_contents.append(300)
    with pytest.raises(RpcFailure, match="does not fit INT8"):
        request_body(request)
    fp16 = pb.ModelInferRequest(model_name="m")
    fp16.inputs.add(name="h", datatype="FP16", shape=[1])
    with pytest.raises(RpcFailure, match="raw_input_contents"):
        request_body(fp16)


def test_bytes_that_are_no_message_are_an_invalid_argument() -> None:
    with pytest.raises(RpcFailure) as caught:
        parse(pb.ModelInferRequest, b"\xff\xff\xff")
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("binary", [True, False])
def test_the_worker_s_answer_becomes_raw_output_contents(binary: bool) -> None:
    outputs = {f"y_{name}": array for name, array in samples().items()}
    if not binary:  # JSON carries text only (the front asks for binary; this is its fallback)
        outputs["y_BYTES"] = np.asarray([[b"a", b"b", b""], [b"ccc", b"d", b"e"]], dtype=object)
    oip = {"id": "7", "outputs": [], "parameters": {"binary_data_output": binary}}
    body, headers, content_type = encode_response(outputs, oip, "m", "1.0", list(outputs))
    response = response_message(InferResult(200, content_type, headers, body))
    assert (response.model_name, response.model_version, response.id) == ("m", "1.0", "7")
    assert len(response.raw_output_contents) == len(outputs)
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        expected = outputs[tensor.name]
        assert list(tensor.shape) == list(expected.shape)
        assert raw == serialized(expected.astype(np.bool_) if tensor.datatype == "BOOL" else expected), tensor.name


def test_the_input_map_becomes_form_fields() -> None:
    fields = {"data": b"\x00\xffraw --boundary", "text": "h\u00e9".encode()}
    body, content_type = form_body(fields)
    item = torchserve.decode_request(body, content_type)
    assert item["data"] == fields["data"] and item["text"] == fields["text"] and item["body"] == fields["data"]
    for bad in ({}, {'quo"te': b"x"}, {"line\nbreak": b"x"}):
        with pytest.raises(RpcFailure):
            form_body(bad)


def test_http_statuses_map_to_grpc_codes() -> None:
    assert code_for(400) is grpc.StatusCode.INVALID_ARGUMENT
    assert code_for(404) is grpc.StatusCode.NOT_FOUND
    assert code_for(503) is grpc.StatusCode.UNAVAILABLE
    assert code_for(504) is grpc.StatusCode.DEADLINE_EXCEEDED
    assert code_for(413) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert code_for(418) is grpc.StatusCode.INVALID_ARGUMENT
    assert code_for(500) is grpc.StatusCode.INTERNAL


def test_the_generated_modules_match_the_proto_files(tmp_path: Path) -> None:
    """Regenerated from the .proto files (as the protos package's docstring says), the modules are those committed."""
    import importlib.util

    from grpc_tools import protoc

    def folder(module: str) -> Path:
        spec = importlib.util.find_spec(module)
        assert spec is not None and spec.origin is not None
        return Path(spec.origin).parent

    root = Path(__file__).resolve().parents[2]
    protos = sorted((root / "modelserve" / "server" / "protos").glob("*.proto"))
    site = folder("google.rpc.status_pb2").parents[1]
    args = ["protoc", f"-I{root}", f"-I{folder('grpc_tools') / '_proto'}", f"-I{site}",
            f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
            *(str(p) for p in protos)]  # fmt: skip
    assert protoc.main(args) == 0
    generated = tmp_path / "modelserve" / "server" / "protos"
    for path in sorted(generated.iterdir()):
        if path.name == "oip_pb2_grpc.py":  # oip.proto declares no service
            continue
        assert path.read_text() == (root / "modelserve" / "server" / "protos" / path.name).read_text(), path.name
