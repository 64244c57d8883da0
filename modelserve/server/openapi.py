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


def _operation(route: RouteDoc) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": (route.method.lower() + route.path).replace("/", "_").replace("{", "").replace("}", ""),
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
