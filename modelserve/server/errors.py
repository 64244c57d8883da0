"""The one place where domain errors become HTTP status codes and JSON error bodies."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

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
]

TYPE_NAMES = {
    400: "BadRequestException",
    401: "Unauthorized",
    403: "ForbiddenException",
    404: "ModelNotFoundException",
    405: "MethodNotAllowedException",
    409: "ConflictStatusException",
    413: "RequestEntityTooLarge",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
    504: "RequestTimeoutException",
    507: "InsufficientStorageException",
}


def status_for(error: Exception) -> int:
    for kind, status in STATUS_BY_ERROR:
        if isinstance(error, kind):
            return status
    return 500


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, v2_style: bool = False
) -> web.Response:
    """TorchServe-style ``{"code", "type", "message"}``; the Open Inference Protocol's ``{"error"}`` on /v2."""
    body: dict[str, object]
    if v2_style:
        body = {"error": message}
    else:
        body = {"code": status, "type": TYPE_NAMES.get(status, "ServerException"), "message": message}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)


def _retry_headers(error: Exception) -> dict[str, str] | None:
    if isinstance(error, ServiceUnavailableError):
        return {"Retry-After": str(error.retry_after_s)}
    return None


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    v2 = request.path.startswith(("/v2", "/v1"))
    try:
        return await handler(request)
    except ModelServeError as exc:
        return error_response(status_for(exc), str(exc), _retry_headers(exc), v2)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
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
        return error_response(exc.status, message, headers or None, v2)
    except Exception as exc:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, f"internal error: {type(exc).__name__}", None, v2)


MAX_BODY_KEY = web.AppKey("max_body", int)
