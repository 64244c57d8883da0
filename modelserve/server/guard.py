"""Connection guards: a cap on open connections, deadlines on every phase of a request, and protocol-level errors.

aiohttp bounds header size and count but not how long a client may take: a few hundred clients trickling one header
or body byte every few seconds would hold every connection. Each connection has one deadline at a time: for its
headers (``header_timeout``), then for its body (``body_timeout``, answered with 408), then, between requests, for
the next request's headers (``keep_alive_timeout`` idle plus ``header_timeout``). A connection over the cap is closed
at once. Errors aiohttp's parser raises before any application code runs (too many or too long headers) are answered
here in the JSON error shape, logged as one warning line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web
from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_urldispatcher import ResourceRoute

from modelserve.server.errors import REQUEST_ID_HEADER, Handler, error_response, request_id_of

log = logging.getLogger("modelserve.server")


@dataclass(frozen=True)
class Deadlines:
    """How long each phase of a request may take, in seconds."""

    header_s: float
    body_s: float
    keep_alive_s: float


class BodyTimeoutError(web.HTTPRequestTimeout):
    """The request body did not arrive in full within ``body_timeout``."""


class _Refuse(asyncio.Protocol):
    """Closes a connection over the cap as soon as it opens."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class GuardedRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering parser errors in the JSON error shape with one warning line."""

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        if isinstance(exc, LineTooLong):
            # RFC 6585's status; the parser does not say whether the request line or a header field was too long
            status = 431
            text = f"the request line or a header field is longer than {self.max_field_size} bytes"
        elif isinstance(exc, ContentEncodingError):
            status = 415
            text = "Content-Encoding not supported: send the body as identity, gzip, deflate or br"
        else:
            # the parser's first line names the problem; the rest echoes the client's bytes under a caret
            lines = str(exc.message or message or "").strip().splitlines() or ["bad request"]
            text = lines[0].rstrip(":")[:200]
        log.warning("refused a malformed request from %s: %d %s", request.remote, status, text)
        response = error_response(status, f"malformed request: {text}")
        response.force_close()
        return response


class ConnectionGuard:
    def __init__(self, max_connections: int, deadlines: Deadlines) -> None:
        self.max_connections = max_connections
        self.deadlines = deadlines
        # protocol -> its pending deadline; an entry outlives its connection at most until that deadline fires
        self._deadlines: dict[Any, asyncio.TimerHandle] = {}
        # protocols whose current request body missed its deadline
        self._body_expired: set[Any] = set()
        self.refused = 0
        self.expired = 0

    def wrap(self, server: Any) -> Callable[[], asyncio.BaseProtocol]:
        """A protocol factory around aiohttp's ``web_server.Server``."""
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.BaseProtocol:
            if len(server.connections) >= self.max_connections:
                self.refused += 1
                return _Refuse()
            # the keyword arguments the runner gave its server (limits, keep-alive), for our handler class
            protocol = GuardedRequestHandler(server, loop=loop, **server._kwargs)
            self._arm(loop, protocol, self.deadlines.header_s, self._expire)
            return protocol

        return factory

    def _arm(self, loop: asyncio.AbstractEventLoop, protocol: Any, delay: float, action: Callable[[Any], None]) -> None:
        self._disarm(protocol)
        self._deadlines[protocol] = loop.call_later(delay, action, protocol)

    def _disarm(self, protocol: Any) -> None:
        previous = self._deadlines.pop(protocol, None)
        if previous is not None:
            previous.cancel()

    def _expire(self, protocol: Any) -> None:
        """Headers (or the next request after an idle keep-alive) too late: close the connection."""
        self._deadlines.pop(protocol, None)
        transport = getattr(protocol, "transport", None)
        if transport is not None and not transport.is_closing():
            self.expired += 1
            protocol.force_close()
            transport.close()

    def _expire_body(self, request: web.Request) -> None:
        """The body is late: whoever reads it gets a 408, and the connection closes after that answer."""
        protocol = request.protocol
        self._deadlines.pop(protocol, None)
        if request.content.is_eof():
            return
        self.expired += 1
        self._body_expired.add(protocol)
        request.content.set_exception(
            BodyTimeoutError(text=f"request body not received within body_timeout ({self.deadlines.body_s:g} s)")
        )

    def middleware(self) -> Any:
        guard = self

        @web.middleware
        async def deadlines(request: web.Request, handler: Handler) -> web.StreamResponse:
            protocol = request.protocol
            loop = asyncio.get_running_loop()
            guard._disarm(protocol)  # the headers arrived
            if not request.content.is_eof():
                guard._deadlines[protocol] = loop.call_later(guard.deadlines.body_s, guard._expire_body, request)
            try:
                response = await handler(request)
            except BaseException:
                guard._body_expired.discard(protocol)
                guard._arm(loop, protocol, guard.deadlines.header_s + guard.deadlines.keep_alive_s, guard._expire)
                raise
            guard._disarm(protocol)
            if protocol in guard._body_expired:
                guard._body_expired.discard(protocol)
                log.warning("request body from %s too slow: %s %s answered %d after body_timeout (%g s), "
                            "connection closed", request.remote, request.method, request.path, response.status,
                            guard.deadlines.body_s)  # fmt: skip
            if request.content.exception() is not None:
                # a body that timed out or failed to parse: answer, then close; aiohttp would otherwise try to read
                # the rest of it and log the same error again as an unhandled exception
                response.force_close()
                with contextlib.suppress(ConnectionError):  # the client may be gone already
                    await response.prepare(request)
                    await response.write_eof()
                protocol.force_close()
                return response
            encoding = request.headers.get(hdrs.CONTENT_ENCODING)  # most requests have none: no string work then
            if encoding is not None and encoding.strip().lower() != "identity" and not request.content.is_eof():
                # a refused compressed body (a zip bomb's 413): aiohttp would linger decoding the rest, seconds of
                # CPU for a megabyte sent; instead the rest is dropped undecoded until the connection closes
                response.force_close()
                protocol.close()
                return response
            # the next request on this keep-alive connection gets its own deadline (idle time included)
            guard._arm(loop, protocol, guard.deadlines.header_s + guard.deadlines.keep_alive_s, guard._expire)
            return response

        return deadlines


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# control characters other than horizontal tab end or split a header line
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


# short header lines already found valid: a handler answers with the same few on every request (bounded: a handler
# that makes up new values each time only stops being remembered)
_VALID: set[tuple[str, str]] = set()
_VALID_LIMIT = 1024


def invalid_header(name: str, value: str) -> str | None:
    """Why ``name: value`` cannot go on the wire as a response header, or None when it can."""
    if (name, value) in _VALID:
        return None
    if not _TOKEN.fullmatch(name):
        return f"name {name!r} is not an HTTP token"
    if _BAD_VALUE.search(value):
        return f"value of {name!r} holds a control character (CR, LF or NUL)"
    if len(_VALID) < _VALID_LIMIT and len(value) <= 256:
        _VALID.add((name, value))
    return None


def refuse_oversized_expectations(app: web.Application) -> None:
    """``Expect: 100-continue`` with a Content-Length over the app's limit gets the 413 at once, never a 100 first.

    aiohttp sends ``100 Continue`` from a route's expect handler before any middleware runs, so every route of ``app``
    gets this one; call it once all routes are added.
    """

    async def expect(request: web.Request) -> web.StreamResponse | None:
        declared = request.content_length
        limit = request.client_max_size
        if declared is not None and declared > limit:
            response = error_response(413, f"request body of {declared} bytes is larger than the limit of {limit}")
            response.headers[REQUEST_ID_HEADER] = request_id_of(request)
            response.force_close()
            return response
        expect_value = request.headers.get(hdrs.EXPECT, "")
        if request.version >= (1, 1) and expect_value.lower() != "100-continue":
            return error_response(417, f"unknown Expect: {expect_value}")
        if request.version >= (1, 1):
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the real answer is still to come
        return None

    for route in app.router.routes():
        if isinstance(route, ResourceRoute):
            # aiohttp takes an expect handler only when a route is added; the routes are added by each app
            route._expect_handler = expect
        else:
            log.debug("route %r keeps aiohttp's expect handler", route)


class GuardedSite(web.TCPSite):
    """A TCP site whose connections go through a ConnectionGuard."""

    def __init__(
        self, runner: web.AppRunner, host: str, port: int, guard: ConnectionGuard, backlog: int = 1024
    ) -> None:
        super().__init__(runner, host, port, backlog=backlog, reuse_address=True)
        self._guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        if server is None:
            raise RuntimeError("the runner is not set up")
        self._server = await loop.create_server(
            self._guard.wrap(server), self._host, self._port, backlog=self._backlog, reuse_address=True
        )
