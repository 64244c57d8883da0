"""Connection guards: a cap on open connections and a deadline for a request's headers (slow-client defence).

aiohttp bounds header size and count but not how long a client may take to send them: a few hundred clients
trickling one header byte every few seconds would hold every connection. Each connection gets a deadline for its
headers, re-armed after every response; a connection over the cap is closed at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from modelserve.server.errors import Handler

log = logging.getLogger("modelserve.server")


class _Refuse(asyncio.Protocol):
    """Closes a connection over the cap as soon as it opens."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class ConnectionGuard:
    def __init__(self, max_connections: int, header_timeout_s: float, keepalive_s: float) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.keepalive_s = keepalive_s
        # protocol -> its pending deadline; an entry outlives its connection at most until that deadline fires
        self._deadlines: dict[Any, asyncio.TimerHandle] = {}
        self.refused = 0
        self.expired = 0

    def wrap(self, server: Any) -> Callable[[], asyncio.BaseProtocol]:
        """A protocol factory around aiohttp's ``web_server.Server``."""
        loop = asyncio.get_running_loop()

        def factory() -> asyncio.BaseProtocol:
            if len(server.connections) >= self.max_connections:
                self.refused += 1
                return _Refuse()
            protocol = server()
            self._arm(loop, protocol, self.header_timeout_s)
            return protocol  # type: ignore[no-any-return]

        return factory

    def _arm(self, loop: asyncio.AbstractEventLoop, protocol: Any, delay: float) -> None:
        previous = self._deadlines.pop(protocol, None)
        if previous is not None:
            previous.cancel()
        self._deadlines[protocol] = loop.call_later(delay, self._expire, protocol)

    def _expire(self, protocol: Any) -> None:
        self._deadlines.pop(protocol, None)
        transport = getattr(protocol, "transport", None)
        if transport is not None and not transport.is_closing():
            self.expired += 1
            protocol.force_close()
            transport.close()

    def middleware(self) -> Any:
        guard = self

        @web.middleware
        async def headers_arrived(request: web.Request, handler: Handler) -> web.StreamResponse:
            protocol = request.protocol
            deadline = guard._deadlines.pop(protocol, None)
            if deadline is not None:
                deadline.cancel()
            try:
                return await handler(request)
            finally:
                # the next request on this keep-alive connection gets its own deadline (idle time included)
                guard._arm(asyncio.get_running_loop(), protocol, guard.header_timeout_s + guard.keepalive_s)

        return headers_arrived


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
