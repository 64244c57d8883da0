"""TorchServe's gRPC APIs: ``org.pytorch.serve.grpc.inference.InferenceAPIsService`` (Ping, Predictions,
StreamPredictions, StreamPredictions2) on the inference port and ``org.pytorch.serve.grpc.management.
ManagementAPIsService`` on the management port, with TorchServe's messages.

A ``PredictionsRequest``'s ``input`` map reaches the handler as form fields by name, as TorchServe hands them over
(``data[0]["data"]`` for the key ``data``; the first field is also ``body``): it is sent to the worker as a
multipart/form-data body, which the TorchServe codec decodes. The management calls are the HTTP management API's own
functions, with TorchServe's gRPC reading of the fields: a number left at 0 or a string left empty is not given,
``synchronous`` is false unless set. The whole management service needs the token (``authorization: Bearer <key>``
metadata) when token auth is on; register and unregister need the model API, as over HTTP.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import empty_pb2

from modelserve.batching.types import ERROR_CONTENT_TYPE, InferResult, Protocol, new_request_id
from modelserve.models.version import ModelVersion
from modelserve.server import management
from modelserve.server.dataplane import EXPLAIN_HEADER
from modelserve.server.grpc_common import (
    Context,
    RpcFailure,
    bidi_streaming,
    code_for,
    failure_of,
    invalid,
    parse,
    server_streaming,
    unary,
)
from modelserve.server.inference import URL_PATH_HEADER
from modelserve.server.protos import inference_pb2, management_pb2

INFERENCE_SERVICE = "org.pytorch.serve.grpc.inference.InferenceAPIsService"
MANAGEMENT_SERVICE = "org.pytorch.serve.grpc.management.ManagementAPIsService"
_FIELD_NAME = re.compile(r'[^"\\\x00-\x1f\x7f]{1,256}')
_MODEL_API_USE = "(or enable_model_api=true) to register or unregister models"


def form_body(fields: Any) -> tuple[bytes, str]:
    """The ``input`` map as a multipart/form-data body (each field a file part, so its bytes stay bytes)."""
    if not fields:
        raise invalid("input is empty: give the handler's input fields by name (e.g. 'data')")
    for name in fields:
        if not _FIELD_NAME.fullmatch(name):
            raise invalid(f"input field name {name!r} must be 1 to 256 characters, without quotes, backslashes "
                          "or control characters")  # fmt: skip
    while True:
        boundary = secrets.token_hex(16)
        marker = boundary.encode()
        if not any(marker in value for value in fields.values()):
            break
    parts = []
    for name, value in fields.items():
        encoded = name.encode()
        parts.append(b"--" + marker + b'\r\nContent-Disposition: form-data; name="' + encoded + b'"; filename="'
                     + encoded + b'"\r\nContent-Type: application/octet-stream\r\n\r\n' + value + b"\r\n")  # fmt: skip
    return b"".join(parts) + b"--" + marker + b"--\r\n", f"multipart/form-data; boundary={boundary}"


def _error(result: InferResult) -> RpcFailure:
    return RpcFailure(code_for(result.status), result.body.decode("utf-8", "replace"), result.status)


class InferenceService:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.state = context.state

    async def ping(self, raw: bytes, context: Any) -> Any:
        parse(empty_pb2.Empty, raw)
        state = self.state
        if state.draining:
            health = "Draining"
        else:
            health = "Healthy" if all(v.healthy for v in state.registry.all_versions()) else "Unhealthy"
        return inference_pb2.TorchServeHealthResponse(health=json.dumps({"status": health}, indent=2))

    async def _infer(self, request: Any, method: str) -> InferResult:
        plane = self.context.plane
        started = time.perf_counter()
        request_id = new_request_id()
        name, version_name = request.model_name, request.model_version or None
        version: ModelVersion | None = None
        status = 500
        try:
            if not name:
                raise invalid("Parameter model_name is required.")
            version = plane.resolve(name, version_name)
            body, content_type = form_body(request.input)
            headers = {EXPLAIN_HEADER: "False", URL_PATH_HEADER: ""}
            result = await plane.infer(version, Protocol.TORCHSERVE, body, content_type, headers, request_id)
            status = result.status
            return result
        except Exception as exc:
            status = failure_of(exc).status
            raise
        except asyncio.CancelledError:
            status = 499
            raise
        finally:
            plane.record(version, name, version_name, request_id, method, status, started)

    async def _pieces(self, request: Any, method: str) -> AsyncIterator[bytes]:
        """The answer's bodies: one, or each piece of a streamed answer (an error piece ends it with its error)."""
        result = await self._infer(request, method)
        if result.content_type == ERROR_CONTENT_TYPE:
            raise _error(result)
        if result.stream is None:
            yield result.body
            return
        try:
            async for piece in result.stream:
                if piece.content_type == ERROR_CONTENT_TYPE:
                    raise _error(piece)
                yield piece.body
        finally:
            result.stream.cancel()

    async def predictions(self, raw: bytes, context: Any) -> Any:
        """One answer: a streamed answer's pieces are joined, as an HTTP client reads them."""
        request = parse(inference_pb2.PredictionsRequest, raw)
        body = b"".join([piece async for piece in self._pieces(request, "Predictions")])
        return inference_pb2.PredictionResponse(prediction=body)

    async def stream_predictions(self, raw: bytes, context: Any) -> AsyncIterator[Any]:
        request = parse(inference_pb2.PredictionsRequest, raw)
        async for piece in self._pieces(request, "StreamPredictions"):
            yield inference_pb2.PredictionResponse(prediction=piece)

    async def stream_predictions2(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[Any]:
        """Requests in order, each answered in order; an error answers its own request in ``status`` (as TorchServe
        does) and the stream goes on. TorchServe's sequence batching is not here: ``sequence_id`` is only echoed."""
        async for raw in requests:
            request: Any = None
            try:
                request = parse(inference_pb2.PredictionsRequest, raw)
                async for piece in self._pieces(request, "StreamPredictions2"):
                    response = inference_pb2.PredictionResponse(prediction=piece)
                    if request.HasField("sequence_id"):
                        response.sequence_id = request.sequence_id
                    yield response
            except Exception as exc:
                failure = failure_of(exc)
                response = inference_pb2.PredictionResponse()
                response.status.code = failure.code.value[0]
                response.status.message = failure.message
                if request is not None and request.HasField("sequence_id"):
                    response.sequence_id = request.sequence_id
                yield response


def _given(params: dict[str, str], key: str, value: Any) -> None:
    """TorchServe's gRPC reading: a number above 0, a non-empty string, counts as given."""
    if isinstance(value, bool):
        params[key] = "true" if value else "false"
    elif isinstance(value, int):
        if value > 0:
            params[key] = str(value)
    elif value:
        params[key] = value


def _pretty(document: Any) -> str:
    return json.dumps(document, indent=2)


class ManagementService:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.state = context.state

    async def describe_model(self, raw: bytes, context: Any) -> Any:
        self.context.check_token(context)
        request = parse(management_pb2.DescribeModelRequest, raw)
        # customized (the handler's own metadata) is not supported: the description is the one HTTP gives
        described = management.describe_versions(self.state.registry, request.model_name, request.model_version or None)
        return management_pb2.ManagementResponse(msg=_pretty(described))

    async def list_models(self, raw: bytes, context: Any) -> Any:
        self.context.check_token(context)
        request = parse(management_pb2.ListModelsRequest, raw)
        params: dict[str, str] = {}
        _given(params, "limit", request.limit)
        _given(params, "next_page_token", request.next_page_token)
        return management_pb2.ManagementResponse(msg=_pretty(management.list_page(self.state.registry, params)))

    async def register_model(self, raw: bytes, context: Any) -> Any:
        self.context.check_token(context)
        request = parse(management_pb2.RegisterModelRequest, raw)
        if request.s3_sse_kms:
            raise invalid("s3_sse_kms is not supported: register from the model store or an allowed http(s) URL")
        params: dict[str, str] = {}
        for key in ("url", "model_name", "handler", "runtime", "batch_size", "max_batch_delay", "initial_workers",
                    "response_timeout", "startup_timeout", "synchronous"):  # fmt: skip
            _given(params, key, getattr(request, key))
        _, text = await management.register(self.state, params, _MODEL_API_USE)
        return management_pb2.ManagementResponse(msg=text)

    async def scale_worker(self, raw: bytes, context: Any) -> Any:
        self.context.check_token(context)
        request = parse(management_pb2.ScaleWorkerRequest, raw)
        params: dict[str, str] = {}
        for key in ("min_worker", "max_worker", "synchronous"):
            _given(params, key, getattr(request, key))
        _, text = await management.scale(self.state, request.model_name, request.model_version or None, params)
        return management_pb2.ManagementResponse(msg=text)

    async def set_default(self, raw: bytes, context: Any) -> Any:
        self.context.check_token(context)
        request = parse(management_pb2.SetDefaultRequest, raw)
        text = management.set_default_version(self.state, request.model_name, request.model_version)
        return management_pb2.ManagementResponse(msg=text)

    async def unregister_model(self, raw: bytes, context: Any) -> Any:
        self.context.check_token(context)
        request = parse(management_pb2.UnregisterModelRequest, raw)
        if not request.model_name:
            raise invalid("Parameter model_name is required.")
        text = await management.unregister(
            self.state, request.model_name, request.model_version or None, _MODEL_API_USE
        )
        return management_pb2.ManagementResponse(msg=text)


def inference_handler(context: Context) -> grpc.GenericRpcHandler:
    service = InferenceService(context)
    return grpc.method_handlers_generic_handler(INFERENCE_SERVICE, {
        "Ping": unary(service.ping),
        "Predictions": unary(service.predictions),
        "StreamPredictions": server_streaming(service.stream_predictions),
        "StreamPredictions2": bidi_streaming(service.stream_predictions2),
    })  # fmt: skip


def management_handler(context: Context) -> grpc.GenericRpcHandler:
    service = ManagementService(context)
    return grpc.method_handlers_generic_handler(MANAGEMENT_SERVICE, {
        "DescribeModel": unary(service.describe_model),
        "ListModels": unary(service.list_models),
        "RegisterModel": unary(service.register_model),
        "ScaleWorker": unary(service.scale_worker),
        "SetDefault": unary(service.set_default),
        "UnregisterModel": unary(service.unregister_model),
    })  # fmt: skip
