"""The one place where domain errors become HTTP status codes and JSON error bodies (in the shape of the request's
protocol codec)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import hdrs, web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from modelserve.batching.types import new_request_id
from modelserve.errors import (
    ConfigError,
    ForbiddenError,
    InvalidRequestError,
    ModelAlreadyExistsError,
    ModelLoadError,
    ModelNotFoundError,
    ModelServeError,
    NotAllowedError,
    ServiceUnavailableError,
    VersionNotFoundError,
    WorkerDiedError,
    WorkerLoadError,
    WorkerTimeoutError,
)
from modelserve.protocols import codec_for_path, torchserve
from modelserve.protocols.codec import Codec

if TYPE_CHECKING:
    from modelserve.server.state import ServerState

log = logging.getLogger("modelserve.server")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATUS_BY_ERROR: list[tuple[type[Exception], int]] = [
    (ModelNotFoundError, 404),
    (VersionNotFoundError, 404),
    (InvalidRequestError, 400),
    (ConfigError, 400),
    (ForbiddenError, 403),
    (NotAllowedError, 405),
    (ModelAlreadyExistsError, 409),
    (ServiceUnavailableError, 503),
    (WorkerTimeoutError, 504),
    (WorkerDiedError, 500),
    (ModelLoadError, 500),
    (WorkerLoadError, 500),
    # a request body aiohttp could not read: bad Content-Encoding, broken chunks
    (RequestPayloadError, 400),
    (HttpProcessingError, 400),
]


class DefaultVersionInUseError(ForbiddenError):
    """Unregistering the default version while other versions remain."""


# TorchServe names the ``type`` of an error after its exception class; where ours is more specific than the status
TYPE_BY_ERROR: list[tuple[type[Exception], str]] = [
    (VersionNotFoundError, "ModelVersionNotFoundException"),
    (DefaultVersionInUseError, "InvalidModelVersionException"),
    (ModelAlreadyExistsError, "ConflictStatusException"),
]


def status_for(error: Exception) -> int:
    for kind, status in STATUS_BY_ERROR:
        if isinstance(error, kind):
            return status
    return 500


def type_for(error: Exception) -> str | None:
    for kind, name in TYPE_BY_ERROR:
        if isinstance(error, kind):
            return name
    return None


def error_response(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    codec: Codec = torchserve.CODEC,
    type_name: str | None = None,
) -> web.Response:
    """The error in ``codec``'s shape: TorchServe's ``{"code", "type", "message"}`` unless told otherwise."""
    document = codec.error_document(status, message, type_name)
    return web.Response(status=status, text=json.dumps(document), content_type="application/json", headers=headers)


def require_model_api(state: ServerState, action: str) -> None:
    """Refuse (405) a request that would change the models when the model API is off."""
    if not state.model_api_enabled:
        raise NotAllowedError(f"the model API is disabled: start with --enable-model-api {action}")


def _retry_headers(error: Exception) -> dict[str, str] | None:
    if isinstance(error, ServiceUnavailableError):
        return {"Retry-After": str(error.retry_after_s)}
    return None


REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID = web.RequestKey("request_id", str)
_REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_of(request: web.Request) -> str:
    """The client's x-request-id when it is sane, else a fresh one."""
    supplied = request.headers.get(REQUEST_ID_HEADER, "")
    return supplied if _REQUEST_ID_PATTERN.match(supplied) else new_request_id()


def _body_error_message(request: web.Request, exc: Exception) -> str:
    """What was wrong with a request body aiohttp could not read (a bad Content-Encoding, broken chunking)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ContentEncodingError):
            encoding = request.headers.get(hdrs.CONTENT_ENCODING, "").strip().lower()
            return f"request body is not valid {encoding or 'encoded data'} (Content-Encoding: {encoding})"
        cause = cause.__cause__
    detail = exc.message if isinstance(exc, HttpProcessingError) else (exc.__cause__ or exc)
    return f"request body is malformed: {str(detail).strip()[:200]}"


def _map_error(request: web.Request, exc: BaseException) -> web.StreamResponse:
    codec = codec_for_path(request.path)
    if isinstance(exc, (HttpProcessingError, RequestPayloadError)):
        return error_response(400, _body_error_message(request, exc), None, codec)
    if isinstance(exc, ModelServeError):
        return error_response(status_for(exc), str(exc), _retry_headers(exc), codec, type_for(exc))
    if isinstance(exc, web.HTTPException):
        custom = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else None
        if exc.status == 413:
            message = f"request body is larger than the limit of {request.app.get(MAX_BODY_KEY, 0)} bytes"
        elif custom:
            message = custom
        elif exc.status == 404:
            message = f"no route for {request.method} {request.path}"
        elif exc.status == 405:
            message = f"method {request.method} is not allowed on {request.path}"
        else:
            message = exc.reason
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate", "Retry-After")}
        # a path that names no route is TorchServe's ResourceNotFoundException, not a missing model
        type_name = "ResourceNotFoundException" if exc.status == 404 and not custom else None
        return error_response(exc.status, message, headers or None, codec, type_name)
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return error_response(500, f"internal error: {type(exc).__name__}", None, codec)


# Content-Encoding values whose decoding aiohttp does while the body is read (bounded by the app's client_max_size)
DECODED_ENCODINGS = frozenset({"gzip", "deflate", "br", "identity"})


def _check_encoding(request: web.Request) -> None:
    """415 for a request body in a Content-Encoding the server does not decode (gzip, deflate and br it does).

    Decoding happens while the body is read, inside the size limit; a body that is not valid in its declared
    encoding becomes a 400 where errors are mapped.
    """
    declared = request.headers.get(hdrs.CONTENT_ENCODING)
    if declared is not None:
        declared = declared.strip().lower()
        if declared and declared not in DECODED_ENCODINGS:
            raise web.HTTPUnsupportedMediaType(
                text=f"Content-Encoding {declared!r} is not supported: send the body as identity, gzip, deflate or br"
            )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tag every request with an id (echoed in ``x-request-id``), refuse a body encoding the server does not decode,
    and turn every error into a JSON answer."""
    request_id = request_id_of(request)
    request[REQUEST_ID] = request_id
    try:
        _check_encoding(request)
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _map_error(request, exc)
    except Exception as exc:
        response = _map_error(request, exc)
    response.headers[REQUEST_ID_HEADER] = request_id
    return response


MAX_BODY_KEY = web.AppKey("max_body", int)
