"""What the gRPC services share: the call context (state, data plane, token), the error mapping, message parsing,
and the wrappers that turn a service's coroutine into a grpc method handler.

Inference goes through the same :class:`~modelserve.server.dataplane.DataPlane` as HTTP (``resolve``, ``infer``,
``record``); management calls the same functions as the HTTP management app. Every request message is parsed here
(the handlers get raw bytes), so a message that does not parse is INVALID_ARGUMENT, never grpc's own INTERNAL; every
error is one of the codes of :data:`CODE_BY_STATUS`, with a message. Imported only when gRPC is on.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from modelserve.errors import ModelServeError
from modelserve.server.dataplane import DataPlane
from modelserve.server.errors import status_for
from modelserve.server.state import ServerState

log = logging.getLogger("modelserve.grpc")

# an HTTP status (of the data plane's typed errors, or of a handler's error result) as a gRPC status code
CODE_BY_STATUS: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.PERMISSION_DENIED,  # the model API is off (TorchServe's answer too)
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
    507: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
TOKEN_METADATA = "authorization"


def code_for(status: int) -> grpc.StatusCode:
    code = CODE_BY_STATUS.get(status)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if 400 <= status < 500 else grpc.StatusCode.INTERNAL


class RpcFailure(Exception):
    """Ends a call with ``code`` and ``message`` (raised by the services, turned into the call's status here)."""

    def __init__(self, code: grpc.StatusCode, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # the HTTP status it stands for, for the access log and the version's request counts
        self.status = status or next((s for s, c in CODE_BY_STATUS.items() if c is code), 500)


def invalid(message: str) -> RpcFailure:
    return RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, message, 400)


def failure_of(error: Exception) -> RpcFailure:
    """A data plane or management error as the call's status."""
    if isinstance(error, RpcFailure):
        return error
    if isinstance(error, ModelServeError):
        status = status_for(error)
        return RpcFailure(code_for(status), str(error), status)
    log.error("unhandled error in a gRPC call", exc_info=error)
    return RpcFailure(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}", 500)


M = TypeVar("M", bound=Message)


def parse(kind: type[M], raw: bytes) -> M:
    """A request message from its bytes; INVALID_ARGUMENT when they are not one."""
    message: M = kind()
    try:
        message.ParseFromString(raw)
    except (DecodeError, ValueError, TypeError, RuntimeError) as exc:
        raise invalid(f"request is not a valid {kind.DESCRIPTOR.full_name}: {exc}") from None
    return message


@dataclass
class Context:
    """What a service needs: the shared state, the data plane, the management token (None: no token auth)."""

    state: ServerState
    plane: DataPlane
    token: str | None

    def check_token(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """The management token, as TorchServe's gRPC takes it: ``authorization: Bearer <key>`` call metadata."""
        if self.token is None:
            return
        supplied = ""
        for key, value in context.invocation_metadata() or ():
            if key == TOKEN_METADATA and isinstance(value, str):
                supplied = value
        scheme, _, offered = supplied.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(offered.strip().encode(), self.token.encode()):
            raise RpcFailure(
                grpc.StatusCode.UNAUTHENTICATED,
                "the management API requires 'authorization: Bearer <key>' call metadata (the key is in "
                "key_file.json); start with --disable-token-auth to turn this off",
                401,
            )


Unary = Callable[[bytes, "grpc.aio.ServicerContext[Any, Any]"], Awaitable[Message]]
ServerStreaming = Callable[[bytes, "grpc.aio.ServicerContext[Any, Any]"], AsyncIterator[Message]]
BidiStreaming = Callable[[AsyncIterator[bytes], "grpc.aio.ServicerContext[Any, Any]"], AsyncIterator[Message]]


def unary(function: Unary) -> grpc.RpcMethodHandler[Any, Any]:
    @functools.wraps(function)
    async def call(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
        try:
            return await function(raw, context)
        except Exception as exc:
            failure = failure_of(exc)
            await context.abort(failure.code, failure.message)
            raise  # abort raises; this is not reached

    return grpc.unary_unary_rpc_method_handler(call, response_serializer=_serialize)


async def _write_all(messages: AsyncIterator[Message], context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """A streaming call's answers, written as they come; an error ends the call with its status code."""
    try:
        async for message in messages:
            await context.write(message)
    except asyncio.CancelledError:
        await _end_cancelled(context)
        raise
    except Exception as exc:
        failure = failure_of(exc)
        await context.abort(failure.code, failure.message)


def server_streaming(function: ServerStreaming) -> grpc.RpcMethodHandler[Any, Any]:
    @functools.wraps(function)
    async def call(raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await _write_all(function(raw, context), context)

    return grpc.unary_stream_rpc_method_handler(call, response_serializer=_serialize)


def bidi_streaming(function: BidiStreaming) -> grpc.RpcMethodHandler[Any, Any]:
    @functools.wraps(function)
    async def call(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await _write_all(function(requests, context), context)

    return grpc.stream_stream_rpc_method_handler(call, response_serializer=_serialize)


async def _end_cancelled(context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """A streaming call's task was cancelled by the server, not by its client (a reader that took nothing for
    responseTimeout, or the server stopping): end the call with CANCELLED, which a cancelled task alone does not do
    (the client would wait for ever)."""
    if not context.cancelled() and not context.done():
        await context.abort(
            grpc.StatusCode.CANCELLED,
            "the server cancelled the call: its stream was not read for responseTimeout, or the server is stopping",
        )


def _serialize(message: Message) -> bytes:
    serialized: bytes = message.SerializeToString()
    return serialized
