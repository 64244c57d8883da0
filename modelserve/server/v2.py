"""Open Inference Protocol (KServe v2 / Triton HTTP) and KServe v1 routes on the inference port, and the model
repository extension on the management port. Errors on these routes are ``{"error": "..."}``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from modelserve import __version__
from modelserve.errors import ModelNotFoundError
from modelserve.models.registry import RegisterOptions
from modelserve.models.store import archive_stem
from modelserve.models.version import ModelVersion, VersionState
from modelserve.protocols import kserve_v1, oip
from modelserve.server.dataplane import EXPLAIN_HEADER
from modelserve.server.errors import require_model_api
from modelserve.server.http_dataplane import serve
from modelserve.server.openapi import Param, RouteDoc, name_param
from modelserve.server.state import STATE, ServerState
from modelserve.validation import check_name

EXTENSIONS = ["binary_tensor_data", "model_repository"]


def _v(kind: str = "string") -> Param:
    return Param("version", "path", kind, "model version")


INFERENCE_ROUTES = [
    RouteDoc("GET", "/v2", "Server metadata", responses={200: "Metadata"}),
    RouteDoc("GET", "/v2/models/{name}", "Model metadata", (name_param(),), {200: "Metadata", 404: "Unknown"}),
    RouteDoc("GET", "/v2/models/{name}/versions/{version}", "Model version metadata", (name_param(), _v()),
             {200: "Metadata", 404: "Unknown"}),
    RouteDoc("GET", "/v2/models/{name}/ready", "Model readiness", (name_param(),),
             {200: "Ready", 400: "Not ready", 404: "Unknown"}),
    RouteDoc("GET", "/v2/models/{name}/versions/{version}/ready", "Model version readiness", (name_param(), _v()),
             {200: "Ready", 400: "Not ready", 404: "Unknown"}),
    RouteDoc("GET", "/v2/models/{name}/config", "Model configuration (perf_analyzer)", (name_param(),),
             {200: "Configuration", 404: "Unknown"}),
    RouteDoc("GET", "/v2/models/{name}/versions/{version}/config", "Model version configuration",
             (name_param(), _v()), {200: "Configuration", 404: "Unknown"}),
    RouteDoc("POST", "/v2/models/{name}/infer", "Inference (JSON or binary tensors)", (name_param(),),
             {200: "Outputs", 400: "Bad input", 404: "Unknown", 503: "Busy"}, body="application/json"),
    RouteDoc("POST", "/v2/models/{name}/versions/{version}/infer", "Inference on one version", (name_param(), _v()),
             {200: "Outputs", 400: "Bad input", 404: "Unknown", 503: "Busy"}, body="application/json"),
    RouteDoc("GET", "/v1/models/{name}", "KServe v1 model status", (name_param(),), {200: "Status", 404: "Unknown"}),
    RouteDoc("POST", "/v1/models/{name}:predict", "KServe v1 prediction", (name_param(),),
             {200: "Predictions", 400: "Bad input", 404: "Unknown"}, body="application/json"),
    RouteDoc("POST", "/v1/models/{name}:explain", "KServe v1 explanation", (name_param(),),
             {200: "Explanations", 400: "Bad input", 404: "Unknown"}, body="application/json"),
]  # fmt: skip

REPOSITORY_ROUTES = [
    RouteDoc("POST", "/v2/repository/index", "Models in the store and their state", responses={200: "Index"}),
    RouteDoc("POST", "/v2/repository/models/{name}/load", "Load a model from the store", (name_param(),),
             {200: "Loaded", 404: "Not in the store", 405: "Model API disabled"}),
    RouteDoc("POST", "/v2/repository/models/{name}/unload", "Unload every version of a model", (name_param(),),
             {200: "Unloaded", 404: "Unknown", 405: "Model API disabled"}),
]  # fmt: skip


def _version(request: web.Request) -> ModelVersion:
    return request.app[STATE].registry.get(request.match_info["name"], request.match_info.get("version"))


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response({"name": "modelserve", "version": __version__, "extensions": EXTENSIONS})


async def model_metadata(request: web.Request) -> web.Response:
    version = _version(request)
    registry = request.app[STATE].registry
    versions = (
        [version.version] if "version" in request.match_info else [v.version for v in registry.versions(version.name)]
    )
    signature = version.signature
    return web.json_response({
        "name": version.name,
        "versions": versions,
        "platform": version.platform,
        "inputs": signature.get("inputs", []),
        "outputs": signature.get("outputs", []),
    })  # fmt: skip


async def model_ready(request: web.Request) -> web.Response:
    version = _version(request)
    ready = version.state is VersionState.READY and version.pool.ready_count() > 0
    return web.json_response({"name": version.name, "ready": ready}, status=200 if ready else 400)


def _config_tensor(spec: dict[str, Any], batched: bool) -> dict[str, Any]:
    dims = list(spec.get("shape", []))
    if batched and dims:
        dims = dims[1:]
    datatype = str(spec.get("datatype", "FP32")).replace("BYTES", "STRING")
    return {"name": spec.get("name"), "data_type": f"TYPE_{datatype}", "dims": dims}


async def model_config(request: web.Request) -> web.Response:
    version = _version(request)
    signature = version.signature
    inputs = signature.get("inputs", [])
    # a leading dynamic dimension is the batch: report it as max_batch_size, as Triton does
    batched = bool(inputs) and all(spec.get("shape", [0])[:1] == [-1] for spec in inputs)
    return web.json_response({
        "name": version.name,
        "platform": version.platform,
        "backend": "python",
        "max_batch_size": max(version.batch_size, 1) if batched else 0,
        "input": [_config_tensor(spec, batched) for spec in inputs],
        "output": [_config_tensor(spec, batched) for spec in signature.get("outputs", [])],
        "dynamic_batching": {"max_queue_delay_microseconds": int(version.config.max_batch_delay_ms * 1000)},
    })  # fmt: skip


_PREDICT = {EXPLAIN_HEADER: "False"}
_EXPLAIN = {EXPLAIN_HEADER: "True"}


async def infer(request: web.Request) -> web.StreamResponse:
    return await serve(request, oip.CODEC, _PREDICT)


async def v1_predict(request: web.Request) -> web.StreamResponse:
    return await serve(request, kserve_v1.CODEC, _PREDICT)


async def v1_explain(request: web.Request) -> web.StreamResponse:
    """KServe v1 ``:explain``: the handler is told to explain by the ``explain: True`` header, as TorchServe does."""
    return await serve(request, kserve_v1.CODEC, _EXPLAIN, kserve_v1.CODEC.explanations)


async def v1_status(request: web.Request) -> web.Response:
    version = _version(request)
    return web.json_response({"name": version.name, "ready": version.state is VersionState.READY})


def add_inference_routes(app: web.Application) -> None:
    router = app.router
    router.add_get("/v2", server_metadata)
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        router.add_get(prefix, model_metadata)
        router.add_get(prefix + "/ready", model_ready)
        router.add_get(prefix + "/config", model_config)
        router.add_post(prefix + "/infer", infer)
    router.add_get("/v1/models/{name}", v1_status)
    router.add_post(r"/v1/models/{name:[^/:]+}:predict", v1_predict)
    router.add_post(r"/v1/models/{name:[^/:]+}:explain", v1_explain)


# ---- repository extension (management port) -------------------------------------------------------------------


def _store_names(state: ServerState) -> dict[str, str]:
    """Model name -> archive in the store (the file name without its suffix)."""
    names: dict[str, str] = {}
    for archive in state.store.list_archives():
        names.setdefault(archive_stem(archive), archive)
    return names


def repository_entries(state: ServerState) -> list[dict[str, Any]]:
    """Every version registered (name, version, state, the reason when FAILED), and the store's unloaded models."""
    entries: list[dict[str, Any]] = []
    loaded = set()
    for version in state.registry.all_versions():
        loaded.add(version.name)
        entry: dict[str, Any] = {"name": version.name, "version": version.version, "state": version.state.value}
        if version.state is VersionState.FAILED:
            entry["reason"] = version.pool.last_error
        entries.append(entry)
    for name in _store_names(state):
        if name not in loaded:
            entries.append({"name": name, "state": "UNAVAILABLE", "reason": "unloaded"})
    return sorted(entries, key=lambda e: (e["name"], e.get("version", "")))


async def repository_index(request: web.Request) -> web.Response:
    return web.json_response(repository_entries(request.app[STATE]))


_REPOSITORY_USE = "to load or unload models"


async def load_from_store(state: ServerState, name: str) -> None:
    """Load the model ``name`` from its archive in the store (nothing to do when it is registered)."""
    require_model_api(state, _REPOSITORY_USE)
    name = check_name(name)  # the same rules as every registration (400 naming it)
    if name in state.registry.models:
        return
    archive = _store_names(state).get(name)
    if archive is None:
        raise ModelNotFoundError(f"model {name} is not in the model store")
    await state.registry.register(state.store.resolve(archive), RegisterOptions(model_name=name, synchronous=True))
    state.save_snapshot()


async def unload_all_versions(state: ServerState, name: str) -> None:
    """Unregister every version of ``name``, the default last."""
    require_model_api(state, _REPOSITORY_USE)
    registry = state.registry
    versions = registry.versions(name)
    default = registry.defaults[name]
    for version in sorted(versions, key=lambda v: v.version == default):
        await registry.unregister(name, version.version)
    state.save_snapshot()


async def repository_load(request: web.Request) -> web.Response:
    await load_from_store(request.app[STATE], request.match_info["name"])
    return web.json_response({})


async def repository_unload(request: web.Request) -> web.Response:
    await unload_all_versions(request.app[STATE], request.match_info["name"])
    return web.json_response({})


def add_repository_routes(app: web.Application) -> None:
    app.router.add_post("/v2/repository/index", repository_index)
    app.router.add_post("/v2/repository/models/{name}/load", repository_load)
    app.router.add_post("/v2/repository/models/{name}/unload", repository_unload)
