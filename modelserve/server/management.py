"""The management application: register, scale, describe, unregister, set-default, list."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aiohttp import web

from modelserve.errors import InvalidRequestError, NotAllowedError
from modelserve.models.registry import RegisterOptions
from modelserve.models.store import ModelSource, download, is_remote
from modelserve.models.version import ModelVersion
from modelserve.server.auth import token_middleware
from modelserve.server.errors import error_middleware
from modelserve.server.inference import add_description_routes
from modelserve.server.openapi import DESCRIBE_ROUTES, Param, RouteDoc, name_param, version_param
from modelserve.server.state import STATE, ServerState

log = logging.getLogger("modelserve.management")

REGISTER_PARAMS = (
    Param("url", description="archive file name in the model store, or an allowed http(s) URL", required=True),
    Param("model_name"), Param("initial_workers", kind="integer"), Param("synchronous", kind="boolean"),
    Param("batch_size", kind="integer"), Param("max_batch_delay", kind="integer"),
    Param("response_timeout", kind="integer"), Param("startup_timeout", kind="integer"), Param("handler"),
    Param("runtime"),
)  # fmt: skip
SCALE_PARAMS = (Param("min_worker", kind="integer"), Param("max_worker", kind="integer"),
                Param("synchronous", kind="boolean"))  # fmt: skip
ROUTES = [
    *DESCRIBE_ROUTES,
    RouteDoc("GET", "/models", "List models (default versions)",
             (Param("limit", kind="integer"), Param("next_page_token")), {200: "Models"}),
    RouteDoc("POST", "/models", "Register a model version", REGISTER_PARAMS,
             {200: "Registered", 202: "Accepted", 400: "Bad request", 404: "Archive not found",
              405: "Model API disabled", 409: "Already registered", 500: "Load failed"}),
    RouteDoc("GET", "/models/{name}", "Describe the default version", (name_param(),),
             {200: "Description", 404: "Unknown"}),
    RouteDoc("PUT", "/models/{name}", "Scale the default version", (name_param(), *SCALE_PARAMS),
             {200: "Scaled", 202: "Accepted", 400: "Bad request", 404: "Unknown"}),
    RouteDoc("DELETE", "/models/{name}", "Unregister the default version", (name_param(),),
             {200: "Unregistered", 403: "Default version in use", 404: "Unknown", 405: "Model API disabled"}),
    RouteDoc("GET", "/models/{name}/{version}", "Describe one version (or all)", (name_param(), version_param()),
             {200: "Description", 404: "Unknown"}),
    RouteDoc("PUT", "/models/{name}/{version}", "Scale one version", (name_param(), version_param(), *SCALE_PARAMS),
             {200: "Scaled", 202: "Accepted", 400: "Bad request", 404: "Unknown"}),
    RouteDoc("DELETE", "/models/{name}/{version}", "Unregister one version", (name_param(), version_param()),
             {200: "Unregistered", 403: "Default version in use", 404: "Unknown", 405: "Model API disabled"}),
    RouteDoc("PUT", "/models/{name}/{version}/set-default", "Make a version the default",
             (name_param(), version_param()), {200: "Default set", 404: "Unknown"}),
]  # fmt: skip


def _int_param(request: web.Request, key: str) -> int | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequestError(f"parameter {key!r} must be an integer, got {raw!r}") from None


def _bool_param(request: web.Request, key: str, default: bool) -> bool:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return default
    lowered = raw.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise InvalidRequestError(f"parameter {key!r} must be true or false, got {raw!r}")


async def list_models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    # bad values fall back to the defaults, as in TorchServe
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        limit = 100
    if limit <= 0 or limit > 1000:
        limit = 100
    try:
        start = max(int(request.query.get("next_page_token", "0")), 0)
    except ValueError:
        start = 0
    models, following = state.registry.list_page(limit, start)
    body: dict[str, Any] = {"models": models}
    if following is not None:
        body["nextPageToken"] = str(following)
    return web.json_response(body)


def _require_model_api(state: ServerState) -> None:
    if not state.model_api_enabled:
        raise NotAllowedError(
            "the model API is disabled: start with --enable-model-api (or enable_model_api=true) to register or "
            "unregister models over HTTP"
        )


async def _fetch_source(state: ServerState, url: str) -> ModelSource:
    if is_remote(url):
        return await download(
            url, state.config.allowed_urls, state.registry.work_dir, state.config.max_archive_size,
            state.config.url_download_timeout,
        )  # fmt: skip
    return state.store.resolve(url)


async def register_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    _require_model_api(state)
    url = request.query.get("url", "").strip()
    if not url:
        raise InvalidRequestError("parameter 'url' is required")
    overrides = {
        "batchSize": _int_param(request, "batch_size"),
        "maxBatchDelay": _int_param(request, "max_batch_delay"),
        "responseTimeout": _int_param(request, "response_timeout"),
        "startupTimeout": _int_param(request, "startup_timeout"),
    }
    options = RegisterOptions(
        model_name=request.query.get("model_name") or None,
        handler=request.query.get("handler") or None,
        runtime=request.query.get("runtime") or None,
        initial_workers=_int_param(request, "initial_workers"),
        synchronous=_bool_param(request, "synchronous", False),
        config_overrides={k: v for k, v in overrides.items() if v is not None},
    )
    if options.initial_workers is not None and options.initial_workers < 0:
        raise InvalidRequestError("initial_workers must not be negative")
    source = await _fetch_source(state, url)
    try:
        version = await state.registry.register(source, options)
    finally:
        if source.downloaded:
            Path(source.path).unlink(missing_ok=True)
    state.save_snapshot()
    workers = version.min_workers
    if options.synchronous:
        message = f'Model "{version.name}" Version: {version.version} registered with {workers} initial workers'
        return web.json_response({"status": message})
    message = (
        f'Model "{version.name}" Version: {version.version} registered with {workers} initial workers. '
        "Processing worker updates..."
    )
    return web.json_response({"status": message}, status=202)


def _version_of(request: web.Request) -> ModelVersion:
    return request.app[STATE].registry.get(request.match_info["name"], request.match_info.get("version"))


async def describe_model(request: web.Request) -> web.Response:
    registry = request.app[STATE].registry
    name = request.match_info["name"]
    wants_all = request.match_info.get("version") == "all"
    versions = registry.versions(name) if wants_all else [_version_of(request)]
    return web.json_response([v.describe() for v in versions])


async def scale_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    version = _version_of(request)
    min_workers = _int_param(request, "min_worker")
    min_workers = version.min_workers if min_workers is None else min_workers
    max_workers = _int_param(request, "max_worker")
    max_workers = max(version.max_workers, min_workers) if max_workers is None else max_workers
    synchronous = _bool_param(request, "synchronous", False)
    await state.registry.scale(version, min_workers, max_workers, synchronous)
    state.save_snapshot()
    if synchronous:
        return web.json_response(
            {"status": f"Workers scaled to {min_workers} for model: {version.name}, version: {version.version}"}
        )
    return web.json_response({"status": "Processing worker updates..."}, status=202)


async def unregister_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    _require_model_api(state)
    version = await state.registry.unregister(request.match_info["name"], request.match_info.get("version"))
    state.save_snapshot()
    return web.json_response({"status": f'Model "{version.name}" version {version.version} unregistered'})


async def set_default(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name, version = request.match_info["name"], request.match_info["version"]
    state.registry.set_default(name, version)
    state.save_snapshot()
    return web.json_response({"status": f'Default version successfully updated for model "{name}" to "{version}"'})


def create_management_app(state: ServerState, token: str | None) -> web.Application:
    middlewares = [error_middleware]
    if token is not None:
        middlewares.append(token_middleware(token))
    app = web.Application(middlewares=middlewares, client_max_size=1 << 20)
    app[STATE] = state
    from modelserve.server import v2

    add_description_routes(app, "Management API", ROUTES + v2.REPOSITORY_ROUTES)
    app.router.add_get("/models", list_models)
    app.router.add_post("/models", register_model)
    for path in ("/models/{name}", "/models/{name}/{version}"):
        app.router.add_get(path, describe_model)
        app.router.add_put(path, scale_model)
        app.router.add_delete(path, unregister_model)
    app.router.add_put("/models/{name}/{version}/set-default", set_default)
    v2.add_repository_routes(app)
    return app
