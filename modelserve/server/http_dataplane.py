"""The data plane over HTTP: what every inference route does (read the body, call the data plane, write the answer in
its protocol codec's shape, count and log it). The route modules call :func:`serve` and import nothing of each other.

A streamed answer (``InferResult.stream``) is relayed as it comes: chunked transfer, each piece as it is; or, when
the client sends ``Accept: text/event-stream``, server-sent events (``data: <piece>`` and a blank line per piece).
The status and headers are gone by the time a handler fails mid-stream, so the stream ends with the error itself:
a last line with the protocol's error document (chunked; a line break goes first when the last piece did not end
a line), or an ``event: error`` whose data is that document (SSE).
The request is counted and logged when the stream ends: 200, the error's status, or 499 if the client left (its
stream is then cancelled in the worker).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web

from modelserve import safejson
from modelserve.batching.types import ERROR_CONTENT_TYPE, InferResult, ResultStream
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


EVENT_STREAM = "text/event-stream"
_FRAMING_HEADERS = ("content-length", "transfer-encoding")  # a stream's framing is the server's


def wants_events(request: web.Request) -> bool:
    """The client asked for server-sent events."""
    return any(
        part.split(";", 1)[0].strip().lower() == EVENT_STREAM for part in request.headers.get("Accept", "").split(",")
    )


def sse_event(data: bytes, event: str | None = None) -> bytes:
    """One server-sent event: each line of ``data`` as a ``data:`` line, then a blank line."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


def _error_line(piece: InferResult, codec: Codec) -> bytes:
    document = codec.error_document(piece.status, piece.body.decode("utf-8", "replace"))
    return safejson.dumps(document)


async def relay(
    request: web.Request, result: InferResult, stream: ResultStream, codec: Codec, on_first: Callable[[], None]
) -> tuple[web.StreamResponse, int]:
    """Write a streamed answer as it comes; the response and the status to count. The stream is cancelled if the
    client leaves (or anything else stops the relay before the stream ended)."""
    events = wants_events(request)
    headers = {}
    for header_name, header_value in result.headers.items():
        if invalid_header(header_name, header_value) is None and header_name.lower() not in _FRAMING_HEADERS:
            headers[header_name] = header_value
    response = web.StreamResponse(status=result.status, headers=headers)
    content_type = result.content_type if invalid_header("Content-Type", result.content_type) is None else ""
    response.headers["Content-Type"] = EVENT_STREAM if events else (content_type or "application/octet-stream")
    if events:
        response.headers["Cache-Control"] = "no-cache"
    if request.version >= (1, 1):
        response.enable_chunked_encoding()  # an HTTP/1.0 client reads to the end of the connection instead
    status = result.status
    finished = False
    try:
        await response.prepare(request)
        first = True
        line_open = False  # the last piece written did not end a line
        async for piece in stream:
            if first:
                first = False
                on_first()
            if piece.content_type == ERROR_CONTENT_TYPE:
                status = piece.status
                line = _error_line(piece, codec)
                if events:
                    await response.write(sse_event(line, "error"))
                else:
                    await response.write((b"\n" if line_open else b"") + line + b"\n")  # a line of its own
                break
            if piece.body:
                await response.write(sse_event(piece.body) if events else piece.body)
                line_open = not piece.body.endswith(b"\n")
        finished = True
        await response.write_eof()
    except ConnectionError:
        if not finished:
            status = 499  # the client left mid-stream
        response.force_close()
    except asyncio.CancelledError:
        if not finished:
            status = 499
        raise
    finally:
        if not finished:
            stream.cancel()
    return response, status


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
        if result.stream is not None:
            stats = version.stats

            def first_piece() -> None:
                stats.stream_first_piece.observe(time.perf_counter() - started)

            streamed, status = await relay(request, result, result.stream, codec, first_piece)
            return streamed
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
