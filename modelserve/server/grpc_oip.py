"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` (KServe v2, Triton's gRPC API).

``ModelInfer`` is the HTTP route's request in another envelope: the ``ModelInferRequest`` is rewritten, here in the
parent, as the body of the OIP binary tensor extension (a JSON header naming each input with its
``binary_data_size``, then the tensors' bytes), which the OIP codec decodes in the worker exactly as it decodes an
HTTP request; every output is asked for as binary, and the worker's answer (JSON header, then the tensors' bytes) is
rewritten as a ``ModelInferResponse`` with ``raw_output_contents``. ``raw_input_contents`` are passed on as they are
(no copy of the values, no numpy in the parent); typed ``contents`` are packed into the same bytes with the
standard library's ``array``. So the worker, the handlers and the answers are the HTTP OIP's own.

The repository extension (``RepositoryIndex``, ``RepositoryModelLoad``, ``RepositoryModelUnload``) calls the HTTP
extension's functions; it needs the management token as ``authorization`` metadata when token auth is on, and the
model API to be on for load and unload, as over HTTP.
"""

from __future__ import annotations

import array
import asyncio
import json
import struct
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc

from modelserve import __version__, safejson
from modelserve.batching.types import ERROR_CONTENT_TYPE, InferResult, Protocol, new_request_id
from modelserve.models.version import ModelVersion, VersionState
from modelserve.server import v2
from modelserve.server.dataplane import EXPLAIN_HEADER
from modelserve.server.grpc_common import (
    Context,
    RpcFailure,
    bidi_streaming,
    code_for,
    failure_of,
    invalid,
    parse,
    unary,
)
from modelserve.server.protos import oip_pb2 as pb

SERVICE = "inference.GRPCInferenceService"
HEADER_LENGTH = "inference-header-content-length"
# requests of one ModelStreamInfer stream in progress at once; the stream is read no further until one finishes
STREAM_IN_FLIGHT = 16
# Triton's parameters for a decoupled model's responses: ask for an empty response that marks the last one
FINAL_FLAG = "triton_final_response"
ASK_FINAL = "triton_enable_empty_final_response"

# datatype -> (the InferTensorContents field that carries it, the array typecode of its bytes)
_CONTENTS: dict[str, tuple[str, str]] = {
    "BOOL": ("bool_contents", "B"),
    "INT8": ("int_contents", "b"),
    "INT16": ("int_contents", "h"),
    "INT32": ("int_contents", "i"),
    "INT64": ("int64_contents", "q"),
    "UINT8": ("uint_contents", "B"),
    "UINT16": ("uint_contents", "H"),
    "UINT32": ("uint_contents", "I"),
    "UINT64": ("uint64_contents", "Q"),
    "FP32": ("fp32_contents", "f"),
    "FP64": ("fp64_contents", "d"),
}
_BIG_ENDIAN = sys.byteorder == "big"  # the wire's tensors are little-endian


def _parameter_value(parameter: Any) -> Any:
    choice = parameter.WhichOneof("parameter_choice")
    return None if choice is None else getattr(parameter, choice)


def _parameters(parameters: Any) -> dict[str, Any]:
    return {key: _parameter_value(value) for key, value in parameters.items()}


def _pack(values: Any, typecode: str, name: str, datatype: str) -> bytes:
    try:
        packed = array.array(typecode, values)
    except (OverflowError, TypeError) as exc:
        raise invalid(f"input {name!r}: a value does not fit {datatype}: {exc}") from None
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tobytes()


def _bytes_elements(elements: Any) -> bytes:
    return b"".join(struct.pack("<I", len(raw)) + raw for raw in elements)


def _contents_bytes(tensor: Any) -> bytes:
    """An input's typed ``contents`` as the tensor's bytes, as the binary extension carries them."""
    datatype = tensor.datatype
    if datatype == "BYTES":
        return _bytes_elements(tensor.contents.bytes_contents)
    spec = _CONTENTS.get(datatype)
    if spec is None:
        if datatype == "FP16":
            raise invalid(f"input {tensor.name!r}: FP16 has no typed contents; send it in raw_input_contents")
        raise invalid(f"input {tensor.name!r}: unsupported datatype {datatype!r}")
    field, typecode = spec
    return _pack(getattr(tensor.contents, field), typecode, tensor.name, datatype)


def request_body(request: Any) -> tuple[bytes, dict[str, str]]:
    """A ModelInferRequest as the OIP binary extension's body and the headers the OIP codec reads."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise invalid(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs")
    specs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for index, tensor in enumerate(request.inputs):
        if raw:
            if tensor.HasField("contents"):
                raise invalid(f"input {tensor.name!r} has contents and raw_input_contents: send one of them")
            blob = raw[index]
        else:
            blob = _contents_bytes(tensor)
        parameters = _parameters(tensor.parameters)
        parameters["binary_data_size"] = len(blob)
        specs.append({"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape),
                      "parameters": parameters})  # fmt: skip
        blobs.append(blob)
    document: dict[str, Any] = {
        "inputs": specs,
        "parameters": {**_parameters(request.parameters), "binary_data_output": True},
    }
    if request.id:
        document["id"] = request.id
    if request.outputs:
        document["outputs"] = [{"name": o.name, "parameters": {**_parameters(o.parameters), "binary_data": True}}
                               for o in request.outputs]  # fmt: skip
    try:
        header = json.dumps(document, separators=(",", ":"), allow_nan=False).encode()
    except ValueError as exc:  # a NaN or infinite double parameter
        raise invalid(f"request parameters are not valid: {exc}") from None
    headers = {HEADER_LENGTH: str(len(header)), EXPLAIN_HEADER: "False"}
    return header + b"".join(blobs), headers


def _json_bytes(datatype: str, data: Any) -> bytes:
    """An output the worker wrote as JSON data (it writes binary when asked; this is the fallback) as bytes."""
    flat = data if isinstance(data, list) else [data]
    if datatype == "BYTES":
        return _bytes_elements(v.encode() if isinstance(v, str) else bytes(v) for v in flat)
    if datatype == "FP16":
        return struct.pack(f"<{len(flat)}e", *flat)
    spec = _CONTENTS.get(datatype)
    if spec is None:
        raise ValueError(f"unsupported datatype {datatype!r}")
    return _pack(flat, spec[1], "output", datatype)


def response_message(result: InferResult) -> Any:
    """The worker's OIP answer (JSON header, then binary tensors) as a ModelInferResponse with raw contents."""
    body = result.body
    declared = next((v for k, v in result.headers.items() if k.lower() == HEADER_LENGTH), None)
    length = int(declared) if declared is not None else len(body)
    document = safejson.loads(body[:length])
    response = pb.ModelInferResponse(
        model_name=str(document.get("model_name", "")),
        model_version=str(document.get("model_version", "")),
        id=str(document.get("id") or ""),
    )
    offset = length
    raw: list[bytes] = []
    for spec in document.get("outputs", []):
        tensor = response.outputs.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
        size = (spec.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw.append(body[offset : offset + size])
            offset += size
        else:
            raw.append(_json_bytes(tensor.datatype, spec.get("data", [])))
    response.raw_output_contents.extend(raw)
    return response


def _error(result: InferResult) -> RpcFailure:
    return RpcFailure(code_for(result.status), result.body.decode("utf-8", "replace"), result.status)


class OIPService:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.state = context.state
        self.registry = context.state.registry

    def _version(self, name: str, version: str) -> ModelVersion:
        return self.registry.get(name, version or None)

    async def server_live(self, raw: bytes, context: Any) -> Any:
        parse(pb.ServerLiveRequest, raw)
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, raw: bytes, context: Any) -> Any:
        parse(pb.ServerReadyRequest, raw)
        state = self.state
        ready = (
            not state.draining
            and not state.pending_loads
            and all(v.state is VersionState.READY for v in self.registry.all_versions())
        )
        return pb.ServerReadyResponse(ready=ready)

    async def model_ready(self, raw: bytes, context: Any) -> Any:
        request = parse(pb.ModelReadyRequest, raw)
        version = self._version(request.name, request.version)
        return pb.ModelReadyResponse(ready=version.state is VersionState.READY and version.pool.ready_count() > 0)

    async def server_metadata(self, raw: bytes, context: Any) -> Any:
        parse(pb.ServerMetadataRequest, raw)
        return pb.ServerMetadataResponse(name="modelserve", version=__version__, extensions=v2.EXTENSIONS)

    async def model_metadata(self, raw: bytes, context: Any) -> Any:
        request = parse(pb.ModelMetadataRequest, raw)
        version = self._version(request.name, request.version)
        versions = [version.version] if request.version else [v.version for v in self.registry.versions(version.name)]
        signature = version.signature

        def tensors(specs: list[dict[str, Any]]) -> list[Any]:
            return [pb.ModelMetadataResponse.TensorMetadata(name=str(s.get("name", "")),
                                                            datatype=str(s.get("datatype", "")),
                                                            shape=[int(d) for d in s.get("shape", [])])
                    for s in specs]  # fmt: skip

        return pb.ModelMetadataResponse(
            name=version.name,
            versions=versions,
            platform=version.platform,
            inputs=tensors(signature.get("inputs", [])),
            outputs=tensors(signature.get("outputs", [])),
        )

    async def _infer(self, request: Any, method: str) -> InferResult:
        """One request through the data plane; the result (maybe a stream) or the call's error."""
        plane = self.context.plane
        started = time.perf_counter()
        request_id = new_request_id()
        name, version_name = request.model_name, request.model_version or None
        version: ModelVersion | None = None
        status = 500
        try:
            version = plane.resolve(name, version_name)
            body, headers = request_body(request)
            result = await plane.infer(version, Protocol.OIP_V2, body, "application/octet-stream", headers,
                                       request_id)  # fmt: skip
            status = result.status
            return result
        except Exception as exc:
            status = failure_of(exc).status
            raise
        except asyncio.CancelledError:
            status = 499  # the client left, or its deadline passed
            raise
        finally:
            plane.record(version, name, version_name, request_id, method, status, started)

    async def model_infer(self, raw: bytes, context: Any) -> Any:
        request = parse(pb.ModelInferRequest, raw)
        result = await self._infer(request, "ModelInfer")
        if result.stream is not None:
            result.stream.cancel()
            raise RpcFailure(grpc.StatusCode.INVALID_ARGUMENT,
                             f"model {request.model_name} streams its answers: use ModelStreamInfer", 400)  # fmt: skip
        if result.content_type == ERROR_CONTENT_TYPE:
            raise _error(result)
        return _answer(result)

    async def _stream_one(self, raw: bytes, out: asyncio.Queue[Any]) -> None:
        """One request of a ModelStreamInfer stream: its responses (one, or a streamed model's pieces) or its error."""
        request: Any = None
        try:
            request = parse(pb.ModelInferRequest, raw)
            ask_final = ASK_FINAL in request.parameters and _parameter_value(request.parameters[ASK_FINAL]) is True
            result = await self._infer(request, "ModelStreamInfer")
            pieces: AsyncIterator[InferResult] | None = None
            if result.stream is not None:
                pieces = aiter(result.stream)
            elif result.content_type == ERROR_CONTENT_TYPE:
                raise _error(result)
            try:
                if pieces is None:
                    await out.put(_streamed(_answer(result), final=not ask_final, flag=ask_final))
                else:
                    async for piece in pieces:
                        if piece.content_type == ERROR_CONTENT_TYPE:
                            raise _error(piece)
                        await out.put(_streamed(_answer(piece), final=False, flag=ask_final))
            finally:
                if result.stream is not None:
                    result.stream.cancel()
            if ask_final:
                final = pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version,
                                              id=request.id)  # fmt: skip
                final.parameters[FINAL_FLAG].bool_param = True
                await out.put(pb.ModelStreamInferResponse(infer_response=final))
        except Exception as exc:
            failure = failure_of(exc)
            message = pb.ModelStreamInferResponse(error_message=failure.message)
            if request is not None:
                message.infer_response.id = request.id
                message.infer_response.model_name = request.model_name
                message.infer_response.model_version = request.model_version
            await out.put(message)

    async def model_stream_infer(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[Any]:
        """Requests are answered as they finish (each response carries its request's id), up to STREAM_IN_FLIGHT at
        once; an error answers its own request (``error_message``), and the stream goes on."""
        out: asyncio.Queue[Any] = asyncio.Queue(maxsize=STREAM_IN_FLIGHT)
        slots = asyncio.Semaphore(STREAM_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()
        done = object()

        async def run(raw: bytes) -> None:
            try:
                await self._stream_one(raw, out)
            finally:
                slots.release()

        async def read() -> None:
            try:
                async for raw in requests:
                    await slots.acquire()
                    task = asyncio.create_task(run(raw))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                await out.put(done)

        reader = asyncio.create_task(read())
        try:
            while True:
                message = await out.get()
                if message is done:
                    break
                yield message
            await reader
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def repository_index(self, raw: bytes, context: Any) -> Any:
        self.context.check_token(context)
        request = parse(pb.RepositoryIndexRequest, raw)
        response = pb.RepositoryIndexResponse()
        for entry in v2.repository_entries(self.state):
            if request.ready and entry["state"] != VersionState.READY.value:
                continue
            response.models.add(name=entry["name"], version=entry.get("version", ""), state=entry["state"],
                                reason=entry.get("reason") or "")  # fmt: skip
        return response

    async def repository_model_load(self, raw: bytes, context: Any) -> Any:
        self.context.check_token(context)
        request = parse(pb.RepositoryModelLoadRequest, raw)
        if request.parameters:
            raise invalid("RepositoryModelLoad takes no parameters here (no config or file overrides)")
        await v2.load_from_store(self.state, request.model_name)
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(self, raw: bytes, context: Any) -> Any:
        self.context.check_token(context)
        request = parse(pb.RepositoryModelUnloadRequest, raw)  # unload_dependents: no model has dependents here
        await v2.unload_all_versions(self.state, request.model_name)
        return pb.RepositoryModelUnloadResponse()


def _answer(result: InferResult) -> Any:
    try:
        return response_message(result)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise RpcFailure(grpc.StatusCode.INTERNAL, f"the handler's answer is not an OIP response: {exc}", 500) from None


def _streamed(response: Any, final: bool, flag: bool) -> Any:
    if flag:
        response.parameters[FINAL_FLAG].bool_param = final
    return pb.ModelStreamInferResponse(infer_response=response)


def handler(context: Context) -> grpc.GenericRpcHandler:
    service = OIPService(context)
    return grpc.method_handlers_generic_handler(SERVICE, {
        "ServerLive": unary(service.server_live),
        "ServerReady": unary(service.server_ready),
        "ModelReady": unary(service.model_ready),
        "ServerMetadata": unary(service.server_metadata),
        "ModelMetadata": unary(service.model_metadata),
        "ModelInfer": unary(service.model_infer),
        "ModelStreamInfer": bidi_streaming(service.model_stream_infer),
        "RepositoryIndex": unary(service.repository_index),
        "RepositoryModelLoad": unary(service.repository_model_load),
        "RepositoryModelUnload": unary(service.repository_model_unload),
    })  # fmt: skip
