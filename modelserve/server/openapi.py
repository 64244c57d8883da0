"""OpenAPI 3 documents of each port's routes, built from small route descriptions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelserve import __version__

ERROR_SCHEMA = {
    "type": "object",
    "properties": {"code": {"type": "integer"}, "type": {"type": "string"}, "message": {"type": "string"}},
}


@dataclass(frozen=True)
class Param:
    name: str
    where: str = "query"  # "query" | "path"
    kind: str = "string"
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class RouteDoc:
    method: str
    path: str
    summary: str
    params: tuple[Param, ...] = ()
    responses: dict[int, str] = field(default_factory=dict)
    body: str | None = None  # media type of the request body, if any


@dataclass(frozen=True)
class Link:
    """An OpenAPI link: what a client (or schemathesis' stateful phase) may call next with values from an answer."""

    name: str
    method: str
    path: str
    parameters: dict[str, str]


# register -> describe / scale / unregister, describe -> one version's routes: the management API's workflows
_NAME_FROM_REGISTER = {"name": "$request.query.model_name"}
_VERSION_FROM_DESCRIBE = {"name": "$request.path.name", "version": "$response.body#/0/modelVersion"}
LINKS: dict[tuple[str, str], tuple[Link, ...]] = {
    ("POST", "/models"): (
        Link("DescribeRegistered", "GET", "/models/{name}", _NAME_FROM_REGISTER),
        Link("ScaleRegistered", "PUT", "/models/{name}", _NAME_FROM_REGISTER),
        Link("UnregisterRegistered", "DELETE", "/models/{name}", _NAME_FROM_REGISTER),
    ),
    ("GET", "/models/{name}"): (
        Link("DescribeVersion", "GET", "/models/{name}/{version}", _VERSION_FROM_DESCRIBE),
        Link("ScaleVersion", "PUT", "/models/{name}/{version}", _VERSION_FROM_DESCRIBE),
        Link("SetDefaultVersion", "PUT", "/models/{name}/{version}/set-default", _VERSION_FROM_DESCRIBE),
        Link("UnregisterVersion", "DELETE", "/models/{name}/{version}", _VERSION_FROM_DESCRIBE),
    ),
    ("POST", "/v2/repository/models/{name}/load"): (
        Link("UnloadLoaded", "POST", "/v2/repository/models/{name}/unload", {"name": "$request.path.name"}),
        Link("DescribeLoaded", "GET", "/models/{name}", {"name": "$request.path.name"}),
    ),
}


def operation_id(method: str, path: str) -> str:
    return (method.lower() + path).replace("/", "_").replace("{", "").replace("}", "")


def _operation(route: RouteDoc) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": operation_id(route.method, route.path),
        "responses": {},
    }
    params = [
        {
            "name": p.name,
            "in": p.where,
            "required": p.required or p.where == "path",
            "description": p.description or p.name,
            "schema": {"type": p.kind},
        }
        for p in route.params
    ]
    if params:
        operation["parameters"] = params
    if route.body:
        operation["requestBody"] = {
            "required": False,
            "content": {route.body: {"schema": {"type": "string", "format": "binary"}}},
        }
    for status, description in (route.responses or {200: "OK"}).items():
        response: dict[str, Any] = {"description": description}
        if status >= 400:
            response["content"] = {"application/json": {"schema": ERROR_SCHEMA}}
        else:
            response["content"] = {"application/json": {"schema": {}}}
        operation["responses"][str(status)] = response
    return operation


def build_document(title: str, routes: list[RouteDoc]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    for (method, path), links in LINKS.items():
        source = paths.get(path, {}).get(method.lower())
        if source is None:
            continue
        # only links to operations this document has: each port's document stands alone
        present = {
            link.name: {"operationId": operation_id(link.method, link.path), "parameters": link.parameters}
            for link in links
            if link.method.lower() in paths.get(link.path, {})
        }
        for status, response in source["responses"].items():
            if present and status.startswith("2"):
                response["links"] = present
    return {
        "openapi": "3.0.1",
        "info": {"title": title, "version": __version__, "description": f"modelserve {title}"},
        "paths": paths,
    }


def name_param() -> Param:
    return Param("name", "path", description="model name")


def version_param() -> Param:
    return Param("version", "path", description="model version")


DESCRIBE_ROUTES = [
    RouteDoc("OPTIONS", "/", "This OpenAPI description", responses={200: "OpenAPI document"}),
    RouteDoc("GET", "/api-description", "This OpenAPI description", responses={200: "OpenAPI document"}),
]
