"""The management application: register, scale, describe, unregister, set-default, list."""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiohttp import web

from modelserve import safejson
from modelserve.booleans import query_bool
from modelserve.errors import (
    InvalidRequestError,
    ModelLoadError,
    ModelNotFoundError,
    ModelServeError,
    VersionNotFoundError,
)
from modelserve.models.registry import ModelRegistry, RegisterOptions
from modelserve.models.store import DownloadLimits, ModelSource, download, is_remote
from modelserve.models.version import ModelVersion
from modelserve.server import v2
from modelserve.server.auth import token_middleware
from modelserve.server.errors import DefaultVersionInUseError, error_middleware, require_model_api
from modelserve.server.inference import add_description_routes
from modelserve.server.openapi import DESCRIBE_ROUTES, Param, RouteDoc, name_param, version_param
from modelserve.server.routing import accept_trailing_slashes
from modelserve.server.state import STATE, ServerState
from modelserve.validation import (
    MAX_BATCH_DELAY_MS,
    MAX_BATCH_SIZE,
    MAX_TIMEOUT_S,
    MAX_WORKERS,
    InvalidValueError,
    check_name,
    looks_numeric,
    parse_int,
)

log = logging.getLogger("modelserve.management")

MIN_TIMEOUT_S = 0.001  # the shortest responseTimeout / startupTimeout a model configuration takes

REGISTER_PARAMS = (
    Param("url", description="archive file name in the model store, or an allowed http(s) URL", required=True),
    Param("model_name"), Param("initial_workers", kind="integer"),
    Param("synchronous", kind="boolean", description="answer once the workers are up (default true)"),
    Param("batch_size", kind="integer"), Param("max_batch_delay", kind="integer"),
    Param("response_timeout", kind="integer"), Param("startup_timeout", kind="integer"), Param("handler"),
    Param("runtime"),
)  # fmt: skip
SCALE_PARAMS = (Param("min_worker", kind="integer", description="minimum workers (default 1)"),
                Param("max_worker", kind="integer", description="maximum workers (default min_worker)"),
                Param("synchronous", kind="boolean", description="answer once scaled (default false)"))  # fmt: skip
ROUTES = [
    *DESCRIBE_ROUTES,
    RouteDoc("GET", "/models", "List models (default versions)",
             (Param("limit", kind="integer"), Param("next_page_token")), {200: "Models"}),
    RouteDoc("POST", "/models", "Register a model version", REGISTER_PARAMS,
             {200: "Registered, workers up", 202: "Accepted (synchronous=false)", 400: "Bad request",
              404: "Archive not found",
              405: "Model API disabled", 409: "Already registered", 500: "Load failed"}),
    RouteDoc("GET", "/models/{name}", "Describe the default version", (name_param(),),
             {200: "Description", 404: "Unknown"}),
    RouteDoc("PUT", "/models/{name}", "Scale the default version",
             (name_param(), *SCALE_PARAMS, Param("model_version", description="the version to scale")),
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


# TorchServe's reading of query parameters: a value that is no number at all (``dd``, ``nan``) counts as absent, as
# there; a boolean is true only when it says "true" in any case, as Java's Boolean.parseBoolean has it. A value
# meant as a number (it has digits) must be a valid one within the setting's range, else 400 (modelserve.validation):
# ``1e309``, full-width digits, ``2.5`` or ``batch_size=1000000000`` are refused, never half-read.
_JAVA_INT = re.compile(r"[+-]?[0-9]{1,10}")
_INT32 = (-(2**31), 2**31 - 1)


Params = Mapping[str, str]


def _int_param(
    params: Params, key: str, default: int | None = None, minimum: int = _INT32[0], maximum: int = _INT32[1]
) -> int | None:
    raw = params.get(key)
    if raw is None:
        return default
    if _JAVA_INT.fullmatch(raw) or looks_numeric(raw):
        return parse_int(raw, f"parameter {key}", minimum, maximum)
    log.warning("parameter %s=%s is not an integer, so it is ignored (as TorchServe does)", key, ascii(raw))
    return default


def _bool_param(params: Params, key: str, default: bool) -> bool:
    raw = params.get(key)
    return default if raw is None else query_bool(raw)


async def _register_params(request: web.Request) -> Params:
    """The query string, or (as TorchServe takes it too) a JSON object body with the same keys."""
    if request.content_type != "application/json":
        return request.query
    try:
        body = safejson.loads(await request.read())  # nesting limited: a deep body is a 400, not a RecursionError
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequestError(f"registration body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError('a JSON registration body is an object such as {"url": "model.mar"}')
    params: dict[str, str] = {}
    for key, value in body.items():
        if isinstance(value, bool):
            params[key] = "true" if value else "false"
        elif isinstance(value, float) and not math.isfinite(value):  # 1e309 in JSON reads as inf
            raise InvalidValueError(f"registration parameter {key!r} must be a finite number")
        elif isinstance(value, (str, int, float)):
            params[key] = str(value)
        elif value is not None:
            raise InvalidRequestError(f"registration parameter {key!r} must be a string, number or boolean")
    return params


def list_page(registry: ModelRegistry, params: Params) -> dict[str, Any]:
    """TorchServe's paging: at most 100 per page; ``nextPageToken`` whenever the page did not run past the end."""
    limit = _int_param(params, "limit", 100) or 0
    if limit > 100 or limit < 0:
        limit = 100
    start = max(_int_param(params, "next_page_token", 0) or 0, 0)
    names = sorted(registry.models)
    last = start + limit
    body: dict[str, Any] = {}
    if last > len(names):
        last = len(names)
    else:
        body["nextPageToken"] = str(last)
    body["models"] = [{"modelName": n, "modelUrl": registry.get(n, None).url} for n in names[start:last]]
    return body


async def list_models(request: web.Request) -> web.Response:
    return web.json_response(list_page(request.app[STATE].registry, request.query))


_MODEL_API_USE = "(or enable_model_api=true) to register or unregister models over HTTP"


async def _fetch_source(state: ServerState, url: str) -> ModelSource:
    if is_remote(url):
        config = state.config
        limits = DownloadLimits(max_bytes=config.max_archive_size, total_s=config.url_download_timeout,
                                connect_s=config.url_connect_timeout, idle_s=config.url_idle_timeout)  # fmt: skip
        return await download(url, config.allowed_urls, state.registry.work_dir, limits)
    return state.store.resolve(url)


def _timeout_param(params: Params, key: str) -> float | None:
    value = _int_param(params, key, minimum=-1, maximum=int(MAX_TIMEOUT_S))
    if value is None or value == -1:  # TorchServe's "not given"
        return None
    # 0 asks for no time at all, which TorchServe takes (and then fails every worker start, or every request):
    # here it becomes the shortest time a model configuration takes, with the same outcome
    return MIN_TIMEOUT_S if value == 0 else float(value)


def _register_options(params: Params) -> RegisterOptions:
    # -1 and -100 are TorchServe's values for "not given"; anything else out of range is a 400
    batch_size = _int_param(params, "batch_size", minimum=-1, maximum=MAX_BATCH_SIZE)
    max_batch_delay = _int_param(params, "max_batch_delay", minimum=-100, maximum=int(MAX_BATCH_DELAY_MS))
    overrides = {
        "batchSize": None if batch_size == -1 else batch_size,  # TorchServe's values for "not given"
        "maxBatchDelay": None if max_batch_delay == -100 else max_batch_delay,
        "responseTimeout": _timeout_param(params, "response_timeout"),
        "startupTimeout": _timeout_param(params, "startup_timeout"),
    }
    initial_workers = _int_param(params, "initial_workers", maximum=MAX_WORKERS)
    model_name = params.get("model_name") or None
    return RegisterOptions(
        model_name=None if model_name is None else check_name(model_name),
        handler=params.get("handler") or None,
        runtime=params.get("runtime") or None,
        # TorchServe starts no worker for a negative count
        initial_workers=None if initial_workers is None else max(initial_workers, 0),
        synchronous=False,  # waited for here, so that a failure can name the version
        config_overrides={k: v for k, v in overrides.items() if v is not None},
    )


async def _roll_back(state: ServerState, version: ModelVersion) -> None:
    """A version whose workers cannot start goes again, as in TorchServe (the default passes to another version)."""
    registry = state.registry
    others = [v.version for v in registry.models.get(version.name, {}).values() if v is not version]
    if others and registry.defaults.get(version.name) == version.version:
        registry.set_default(version.name, others[0])
    with contextlib.suppress(ModelServeError):
        await registry.unregister(version.name, version.version)


def _load_failure(version: ModelVersion, error: Exception) -> ModelLoadError:
    return ModelLoadError(f"Failed to start workers for model {version.name} version: {version.version}: {error}")


async def register(state: ServerState, params: Params, model_api_use: str) -> tuple[int, str]:
    """Register a version from TorchServe's registration parameters; by default (as in TorchServe) answer once its
    workers are up. Returns the HTTP status (200, or 202 when not waiting) and the status text."""
    require_model_api(state, model_api_use)
    url = params.get("url")
    if url is None:
        raise InvalidRequestError("Parameter url is required.")
    url = url.strip()
    if not url:
        raise ModelNotFoundError("Model not found at: (empty url)")
    options = _register_options(params)
    synchronous = _bool_param(params, "synchronous", True)
    source = await _fetch_source(state, url)
    try:
        version = await state.registry.register(source, options)
    finally:
        if source.downloaded:
            Path(source.path).unlink(missing_ok=True)
    workers = version.min_workers
    registered = f'Model "{version.name}" Version: {version.version} registered with {workers} initial workers'
    if workers == 0:
        state.save_snapshot()
        return 200, registered + ". Use scale workers API to add workers for the model."
    if not synchronous:
        state.save_snapshot()
        return 202, "Processing worker updates..."
    try:
        await version.wait_ready()
    except ModelLoadError as exc:
        await _roll_back(state, version)
        raise _load_failure(version, exc) from None
    state.save_snapshot()
    return 200, registered


async def register_model(request: web.Request) -> web.Response:
    status, text = await register(request.app[STATE], await _register_params(request), _MODEL_API_USE)
    return web.json_response({"status": text}, status=status)


_TS_DESCRIBE_ORDER = (
    "modelName", "modelVersion", "modelUrl", "runtime", "minWorkers", "maxWorkers", "batchSize", "maxBatchDelay",
    "responseTimeout", "startupTimeout", "maxRetryTimeoutInSec", "clientTimeoutInMills", "parallelType",
    "parallelLevel", "deviceType", "continuousBatching", "useJobTicket", "useVenv", "stateful", "sequenceMaxIdleMSec",
    "sequenceTimeoutMSec", "maxNumSequence", "maxSequenceJobQueueSize", "loadedAtStartup", "workers", "jobQueueStatus",
)  # fmt: skip
# what TorchServe reports for the features modelserve does not have (retry window, client timeouts, model
# parallelism, continuous or sequence batching, job tickets, per-model virtual environments)
_TS_DESCRIBE_DEFAULTS: dict[str, Any] = {
    "maxRetryTimeoutInSec": 300, "clientTimeoutInMills": 0, "parallelType": "", "parallelLevel": 0,
    "continuousBatching": False, "useJobTicket": False, "useVenv": False, "stateful": False,
    "sequenceMaxIdleMSec": 0, "sequenceTimeoutMSec": 0, "maxNumSequence": 0, "maxSequenceJobQueueSize": 0,
}  # fmt: skip


def _whole(value: Any) -> Any:
    """120.0 -> 120: TorchServe's integer fields stay integers for clients that parse them as such."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _ts_time(iso: Any) -> Any:
    """A worker's start time as TorchServe writes it: ``2024-01-31T12:00:00.123Z``."""
    try:
        moment = datetime.fromisoformat(str(iso)).astimezone(timezone.utc)
    except ValueError:
        return iso
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def describe(version: ModelVersion) -> dict[str, Any]:
    """TorchServe's description keys, in its order, then modelserve's own (``handler``, ``status``, ``error``)."""
    own = version.describe()
    own.setdefault("deviceType", version.config.device_type)
    for key, value in _TS_DESCRIBE_DEFAULTS.items():
        own.setdefault(key, value)
    for key in ("batchSize", "maxBatchDelay", "responseTimeout", "startupTimeout"):
        own[key] = _whole(own.get(key))
    own["workers"] = [
        {**worker, "startTime": _ts_time(worker.get("startTime")), "gpuUsage": worker.get("gpuUsage", "N/A")}
        for worker in own.get("workers", [])
    ]
    ordered = {key: own.pop(key) for key in _TS_DESCRIBE_ORDER if key in own}
    ordered.update(own)
    return ordered


def describe_versions(registry: ModelRegistry, name: str, version_name: str | None) -> list[dict[str, Any]]:
    """The description of one version (the default when None), or of every version for ``all``."""
    if version_name == "all":
        registry.get(name, None)
        versions = registry.versions(name)
    else:
        versions = [registry.get(name, version_name)]
    return [describe(v) for v in versions]


async def describe_model(request: web.Request) -> web.Response:
    registry = request.app[STATE].registry
    return web.json_response(describe_versions(registry, request.match_info["name"], request.match_info.get("version")))


async def scale(state: ServerState, name: str, asked_version: str | None, params: Params) -> tuple[int, str]:
    """TorchServe's defaults: ``min_worker`` 1, ``max_worker`` the minimum, asynchronous (202)."""
    version = state.registry.get(name, asked_version)
    min_workers = _int_param(params, "min_worker", 1, maximum=MAX_WORKERS)
    assert min_workers is not None
    max_workers = _int_param(params, "max_worker", min_workers, maximum=MAX_WORKERS)
    assert max_workers is not None
    if max_workers < min_workers:
        raise InvalidRequestError("max_worker cannot be less than min_worker.")
    if min_workers < 0:
        raise InvalidRequestError(f"min_worker must not be negative, got {min_workers}")
    synchronous = _bool_param(params, "synchronous", False)
    try:
        await state.registry.scale(version, min_workers, max_workers, synchronous)
    except ModelLoadError as exc:
        raise _load_failure(version, exc) from None
    finally:
        state.save_snapshot()
    if not synchronous:
        return 202, "Processing worker updates..."
    message = f"Workers scaled to {min_workers} for model: {name}"
    if asked_version is not None:
        message += f", version: {asked_version}"
    return 200, message


async def scale_model(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    asked_version = request.match_info.get("version") or request.query.get("model_version") or None
    status, text = await scale(request.app[STATE], name, asked_version, request.query)
    return web.json_response({"status": text}, status=status)


async def unregister(state: ServerState, name: str, version_name: str | None, model_api_use: str) -> str:
    require_model_api(state, model_api_use)
    registry = state.registry
    version = registry.get(name, version_name)
    if len(registry.versions(version.name)) > 1 and registry.defaults.get(version.name) == version.version:
        raise DefaultVersionInUseError(
            f"Cannot remove default version for model {version.name}: set another default version first"
        )
    await registry.unregister(version.name, version.version)
    state.save_snapshot()
    return f'Model "{version.name}" unregistered'


async def unregister_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    text = await unregister(state, request.match_info["name"], request.match_info.get("version"), _MODEL_API_USE)
    return web.json_response({"status": text})


def set_default_version(state: ServerState, name: str, version: str) -> str:
    state.registry.get(name, None)
    if version not in state.registry.models[name]:
        raise VersionNotFoundError(f"Model version {version} does not exist for model {name}")
    state.registry.set_default(name, version)
    state.save_snapshot()
    return f'Default version successfully updated for model "{name}" to "{version}"'


async def set_default(request: web.Request) -> web.Response:
    text = set_default_version(request.app[STATE], request.match_info["name"], request.match_info["version"])
    return web.json_response({"status": text})


def create_management_app(state: ServerState, token: str | None) -> web.Application:
    middlewares = [error_middleware]
    if token is not None:
        middlewares.append(token_middleware(token))
    app = web.Application(middlewares=middlewares, client_max_size=1 << 20)
    app[STATE] = state
    add_description_routes(app, "Management API", ROUTES + v2.REPOSITORY_ROUTES)
    app.router.add_get("/models", list_models)
    app.router.add_post("/models", register_model)
    for path in ("/models/{name}", "/models/{name}/{version}"):
        app.router.add_get(path, describe_model)
        app.router.add_put(path, scale_model)
        app.router.add_delete(path, unregister_model)
    app.router.add_put("/models/{name}/{version}/set-default", set_default)
    v2.add_repository_routes(app)
    accept_trailing_slashes(app)
    return app
