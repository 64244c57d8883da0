"""CORS, off unless configured: with ``cors_allowed_origin`` set, matching origins get the grant (and preflights an
answer); every other origin gets no CORS header at all."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from modelserve.config import ServerConfig
from modelserve.server.errors import Handler


def cors_middleware(config: ServerConfig) -> Any:
    allowed = {o.strip() for o in (config.cors_allowed_origin or "").split(",") if o.strip()}
    methods = config.cors_allowed_methods or "GET, POST, PUT, DELETE, OPTIONS"
    headers = config.cors_allowed_headers or "Authorization, Content-Type, x-request-id"

    def grant(origin: str) -> dict[str, str]:
        return {
            "Access-Control-Allow-Origin": "*" if "*" in allowed else origin,
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": headers,
            "Vary": "Origin",
        }

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        granted = origin is not None and ("*" in allowed or origin in allowed)
        if granted and request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return web.Response(status=204, headers=grant(origin or ""))
        response = await handler(request)
        if granted:
            response.headers.update(grant(origin or ""))
        return response

    return cors
