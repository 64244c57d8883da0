"""The inference application: /ping, /predictions, health, and this port's OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from aiohttp import web

from modelserve.batching.types import ERROR_CONTENT_TYPE, InferResult, Protocol
from modelserve.errors import ModelLoadError, ServiceUnavailableError
from modelserve.models.version import ModelVersion
from modelserve.server.errors import MAX_BODY_KEY, REQUEST_ID, error_middleware, error_response, status_for
from modelserve.server.guard import invalid_header
from modelserve.server.openapi import DESCRIBE_ROUTES, RouteDoc, build_document, name_param, version_param
from modelserve.server.routing import accept_trailing_slashes
from modelserve.server.state import STATE, ServerState

access_log = logging.getLogger("modelserve.access")
ACCESS_FORMAT = "%s %s %s %s %d %.2fms"


class _DeferredAccessLog:
    """Access lines leave the request path: kept as tuples, handed to logging once the response has been written.

    The line's time is the request's end, not the moment logging sees it.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[float, tuple[object, ...]]] = []

    def add(self, *args: object) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending.append((time.time(), args))

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for created, args in pending:
            record = access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, ACCESS_FORMAT, args, None)
            record.created = created
            record.msecs = int((created - int(created)) * 1000) + 0.0
            access_log.handle(record)


ACCESS_LOG = _DeferredAccessLog()


PREDICTION_RESPONSES = {200: "Prediction", 400: "Bad input", 404: "Unknown model or version", 413: "Body too large",
                        503: "Busy"}  # fmt: skip
# the request header TorchServe's frontend sets to tell a handler to explain instead of predict
EXPLAIN_HEADER = "explain"
# and the one that carries the path segments after /predictions/{name}/{version}
URL_PATH_HEADER = "url_path"
ROUTES = [
    *DESCRIBE_ROUTES,
    RouteDoc("GET", "/ping", "Health of the server and its models", responses={200: "Healthy", 500: "Unhealthy"}),
    *(
        RouteDoc(
            method,
            f"/{kind}{path}",
            f"{summary} with {what}",
            params,
            PREDICTION_RESPONSES,
            body="application/octet-stream",
        )
        for method in ("POST", "PUT")
        for kind, summary in (("predictions", "Predict"), ("explanations", "Explain"))
        for path, what, params in (
            ("/{name}", "the default version", (name_param(),)),
            ("/{name}/{version}", "one version", (name_param(), version_param())),
        )
    ),
    RouteDoc("GET", "/v2/health/live", "Liveness", responses={200: "Live"}),
    RouteDoc("GET", "/v2/health/ready", "Readiness", responses={200: "Ready", 503: "Not ready"}),
]


def _result_response(result: InferResult, max_response_size: int, v2_style: bool) -> web.Response:
    if result.content_type == ERROR_CONTENT_TYPE:
        return error_response(result.status, result.body.decode("utf-8", "replace"), v2_style=v2_style)
    if len(result.body) > max_response_size:
        return error_response(
            500, f"handler response of {len(result.body)} bytes exceeds max_response_size ({max_response_size})"
        )
    for header_name, header_value in [*(result.headers or {}).items(), ("Content-Type", result.content_type)]:
        problem = invalid_header(header_name, header_value)
        if problem is not None:
            # checked here: aiohttp would fail while writing, drop the connection, and the access log would say 200
            return error_response(500, f"handler set an invalid header: {problem}", v2_style=v2_style)
    response = web.Response(status=result.status, body=result.body, headers=result.headers or None)
    response.headers["Content-Type"] = result.content_type
    return response


async def _read_body(request: web.Request, limit: int) -> bytes:
    declared = request.content_length
    if declared is not None and declared > limit:
        # refuse before reading: not one byte of it is buffered, let alone sent to a worker
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=declared)
    return await request.read()


async def infer(
    request: web.Request,
    version: ModelVersion,
    body: bytes,
    protocol: Protocol,
    extra_headers: dict[str, str] | None = None,
) -> InferResult:
    """Queue one request on ``version`` and await its result; the job is abandoned if the client goes away.

    ``extra_headers`` replace the client's headers of the same (lower-case) name.
    """
    headers = {k.lower(): v for k, v in request.headers.items()}
    if extra_headers:
        headers.update(extra_headers)
    job = version.submit(body, request.headers.get("Content-Type", ""), headers, request[REQUEST_ID], protocol)
    try:
        return await job.future
    except ModelLoadError as exc:
        raise ServiceUnavailableError(str(exc), retry_after_s=30) from None
    except asyncio.CancelledError:
        job.future.cancel()
        raise


def _path_headers(request: web.Request, explain: bool) -> dict[str, str]:
    # TorchServe's frontend sets both on every /predictions and /explanations request, over any the client sent
    tail = request.match_info.get("url_path", "").strip("/")
    return {EXPLAIN_HEADER: str(explain), URL_PATH_HEADER: tail}


async def predictions(request: web.Request) -> web.StreamResponse:
    """TorchServe's /predictions/{name}[/{version}[/more/path]]."""
    return await serve_inference(request, Protocol.TORCHSERVE, _path_headers(request, explain=False))


async def explanations(request: web.Request) -> web.StreamResponse:
    """TorchServe's /explanations/{name}[/{version}]: a prediction request whose handler is told to explain."""
    return await serve_inference(request, Protocol.TORCHSERVE, _path_headers(request, explain=True))


async def serve_inference(
    request: web.Request,
    protocol: Protocol,
    extra_headers: dict[str, str] | None = None,
    reshape: Callable[[web.Response], web.Response] | None = None,
) -> web.StreamResponse:
    """Resolve the model version, queue the body, await the worker's answer; count and log the outcome.

    ``extra_headers`` go to the handler with the request's own; ``reshape`` may rewrite a successful answer.
    """
    state = request.app[STATE]
    started = time.perf_counter()
    name = request.match_info["name"]
    version_name = request.match_info.get("version")
    version: ModelVersion | None = None
    status = 500
    try:
        if state.draining:
            raise ServiceUnavailableError("server is shutting down", retry_after_s=5)
        version = state.registry.get(name, version_name)
        body = await _read_body(request, state.config.max_request_size)
        result = await infer(request, version, body, protocol, extra_headers)
        response = _result_response(result, state.config.max_response_size, protocol is not Protocol.TORCHSERVE)
        if reshape is not None and response.status == 200 and result.content_type != ERROR_CONTENT_TYPE:
            response = reshape(response)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except Exception as exc:
        status = status_for(exc)
        raise
    except asyncio.CancelledError:
        status = 499  # client closed the connection
        raise
    finally:
        latency = time.perf_counter() - started
        if version is not None:
            version.stats.record_request(status, latency)
        ACCESS_LOG.add(
            request[REQUEST_ID], name, version.version if version else (version_name or "-"),
            request.method, status, latency * 1000,
        )  # fmt: skip


async def ping(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.draining:
        return web.json_response({"status": "Draining"}, status=503, headers={"Retry-After": "5"})
    healthy = all(v.healthy for v in state.registry.all_versions())
    return web.json_response({"status": "Healthy" if healthy else "Unhealthy"}, status=200 if healthy else 500)


async def live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


async def ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    is_ready = (
        not state.draining
        and not state.pending_loads
        and all(v.state.value == "READY" for v in state.registry.all_versions())
    )
    return web.json_response({"ready": is_ready}, status=200 if is_ready else 503)


def add_description_routes(app: web.Application, title: str, routes: list[RouteDoc]) -> None:
    """``OPTIONS /`` and ``GET /api-description``: this port's OpenAPI document."""
    text = json.dumps(build_document(title, routes))

    async def describe(request: web.Request) -> web.Response:
        return web.Response(text=text, content_type="application/json")

    app.router.add_route("OPTIONS", "/", describe)
    app.router.add_get("/api-description", describe)


def create_inference_app(state: ServerState) -> web.Application:
    from modelserve.server import v2

    app = web.Application(middlewares=[error_middleware], client_max_size=state.config.max_request_size)
    app[STATE] = state
    app[MAX_BODY_KEY] = state.config.max_request_size
    add_description_routes(app, "Inference API", ROUTES + v2.INFERENCE_ROUTES)
    app.router.add_get("/ping", ping)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    for kind, handler in (("predictions", predictions), ("explanations", explanations)):
        for path in ("/{name}", "/{name}/{version}", "/{name}/{version}/{url_path:.+}"):
            app.router.add_post(f"/{kind}{path}", handler)
            app.router.add_put(f"/{kind}{path}", handler)
    v2.add_inference_routes(app)
    accept_trailing_slashes(app)
    return app
