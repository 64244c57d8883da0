"""The inference application: /ping, /predictions, health, and this port's OpenAPI document."""

from __future__ import annotations

import json

from aiohttp import web

from modelserve.models.version import VersionState
from modelserve.protocols import torchserve
from modelserve.server import v2
from modelserve.server.dataplane import EXPLAIN_HEADER, DataPlane
from modelserve.server.errors import MAX_BODY_KEY, error_middleware
from modelserve.server.http_dataplane import PLANE, serve
from modelserve.server.openapi import DESCRIBE_ROUTES, RouteDoc, build_document, name_param, version_param
from modelserve.server.routing import accept_trailing_slashes
from modelserve.server.state import STATE, ServerState

PREDICTION_RESPONSES = {200: "Prediction", 400: "Bad input", 404: "Unknown model or version", 413: "Body too large",
                        503: "Busy"}  # fmt: skip
# the request header TorchServe's frontend sets to carry the path segments after /predictions/{name}/{version}
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


def _path_headers(request: web.Request, explain: bool) -> dict[str, str]:
    # TorchServe's frontend sets both on every /predictions and /explanations request, over any the client sent
    tail = request.match_info.get("url_path", "").strip("/")
    return {EXPLAIN_HEADER: str(explain), URL_PATH_HEADER: tail}


async def predictions(request: web.Request) -> web.StreamResponse:
    """TorchServe's /predictions/{name}[/{version}[/more/path]]."""
    return await serve(request, torchserve.CODEC, _path_headers(request, explain=False))


async def explanations(request: web.Request) -> web.StreamResponse:
    """TorchServe's /explanations/{name}[/{version}]: a prediction request whose handler is told to explain."""
    return await serve(request, torchserve.CODEC, _path_headers(request, explain=True))


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
        and all(v.state is VersionState.READY for v in state.registry.all_versions())
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
    app = web.Application(middlewares=[error_middleware], client_max_size=state.config.max_request_size)
    app[STATE] = state
    app[PLANE] = DataPlane(state)
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
