"""The data plane over HTTP: what every inference route does (read the body, call the data plane, write the answer in
its protocol codec's shape, count and log it). The route modules call :func:`serve` and import nothing of each other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web

from modelserve.batching.types import ERROR_CONTENT_TYPE, InferResult
from modelserve.models.version import ModelVersion
from modelserve.protocols.codec import Codec
from modelserve.server.dataplane import DataPlane
from modelserve.server.errors import REQUEST_ID, error_response, status_for
from modelserve.server.guard import invalid_header

PLANE = web.AppKey("dataplane", DataPlane)


def respond(result: InferResult, codec: Codec) -> web.Response:
    """The HTTP response for a data plane result: a handler's error in the codec's shape, else the result as it is."""
    if result.content_type == ERROR_CONTENT_TYPE:
        return error_response(result.status, result.body.decode("utf-8", "replace"), codec=codec)
    headers = result.headers
    for header_name, header_value in headers.items():
        problem = invalid_header(header_name, header_value)
        if problem is not None:
            # checked here: aiohttp would fail while writing, drop the connection, and the access log would say 200
            return error_response(500, f"handler set an invalid header: {problem}", codec=codec)
    problem = invalid_header("Content-Type", result.content_type)
    if problem is not None:
        return error_response(500, f"handler set an invalid header: {problem}", codec=codec)
    response = web.Response(status=result.status, body=result.body, headers=headers or None)
    response.headers["Content-Type"] = result.content_type
    return response


async def serve(
    request: web.Request,
    codec: Codec,
    extra_headers: dict[str, str],
    reshape: Callable[[InferResult], InferResult] | None = None,
) -> web.StreamResponse:
    """One inference request on ``{name}[/{version}]``: resolved, read, queued, awaited, answered, counted, logged.

    ``extra_headers`` replace the client's headers of the same (lower-case) name; ``reshape`` may rewrite a
    successful result.
    """
    plane = request.app[PLANE]
    started = time.perf_counter()
    match = request.match_info
    name = match["name"]
    version_name = match.get("version")
    version: ModelVersion | None = None
    status = 500
    try:
        version = plane.resolve(name, version_name)
        declared = request.content_length
        if declared is not None and declared > plane.max_request_size:
            # refuse before reading: not one byte of it is buffered, let alone sent to a worker
            raise web.HTTPRequestEntityTooLarge(max_size=plane.max_request_size, actual_size=declared)
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        headers.update(extra_headers)
        result = await plane.infer(
            version, codec.protocol, body, request.headers.get("Content-Type", ""), headers, request[REQUEST_ID]
        )
        if reshape is not None and result.status == 200 and result.content_type != ERROR_CONTENT_TYPE:
            result = reshape(result)
        response = respond(result, codec)
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
        plane.record(version, name, version_name, request[REQUEST_ID], request.method, status, started)
