"""The HTTP relay of a streamed answer, in this process (an aiohttp app on loopback, a stream fed by the test):
chunked pieces, server-sent events, an error mid-stream, and a client that leaves cancelling the stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer

from modelserve.batching.stream import PieceStream
from modelserve.batching.types import ERROR_CONTENT_TYPE, InferResult
from modelserve.protocols.torchserve import CODEC
from modelserve.server.http_dataplane import relay, sse_event

Feed = Callable[[PieceStream], Coroutine[Any, Any, None]]


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 20))


class Relayed:
    """An app whose one route relays a fresh stream that ``feed`` fills; what happened to each stream."""

    def __init__(self, feed: Feed) -> None:
        self.feed = feed
        self.cancelled = asyncio.Event()
        self.statuses: list[int] = []
        self.firsts = 0

    async def handler(self, request: web.Request) -> web.StreamResponse:
        stream = PieceStream(4, on_cancel=self.cancelled.set)
        feeding = asyncio.ensure_future(self.feed(stream))

        def first() -> None:
            self.firsts += 1

        try:
            result = InferResult(200, "text/plain; charset=utf-8", {"x-model": "m"}, stream=stream)
            response, status = await relay(request, result, stream, CODEC, first)
        except asyncio.CancelledError:
            self.statuses.append(499)
            raise
        finally:
            feeding.cancel()
        self.statuses.append(status)
        return response


async def serving(relayed: Relayed) -> TestServer:
    app = web.Application()
    app.router.add_post("/p", relayed.handler)
    server = TestServer(app)
    await server.start_server()
    return server


def pieces(*bodies: bytes, error: InferResult | None = None) -> Feed:
    async def feed(stream: PieceStream) -> None:
        for body in bodies:
            stream.put(InferResult(200, "", body=body))
            await asyncio.sleep(0)
        stream.end(error)

    return feed


def test_pieces_go_as_chunks_in_order() -> None:
    async def scenario() -> None:
        relayed = Relayed(pieces(b"a", b"", b"bc", b"d"))
        server = await serving(relayed)
        async with ClientSession() as session, session.post(server.make_url("/p")) as response:
            assert response.headers["Transfer-Encoding"] == "chunked"
            assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert response.headers["x-model"] == "m"
            assert await response.read() == b"abcd"
        await server.close()
        assert relayed.statuses == [200] and relayed.firsts == 1

    run(scenario())


def test_server_sent_events_when_the_client_asks_for_them() -> None:
    async def scenario() -> None:
        relayed = Relayed(pieces(b'{"i": 0}', b"two\nlines"))
        server = await serving(relayed)
        headers = {"Accept": "application/json, text/event-stream;q=0.9"}
        async with ClientSession() as session, session.post(server.make_url("/p"), headers=headers) as response:
            assert response.headers["Content-Type"] == "text/event-stream"
            assert await response.read() == b'data: {"i": 0}\n\ndata: two\ndata: lines\n\n'
        await server.close()

    run(scenario())


def test_an_error_mid_stream_is_the_last_line_or_an_error_event() -> None:
    async def scenario() -> None:
        error = InferResult(500, ERROR_CONTENT_TYPE, body=b"ValueError: boom")
        relayed = Relayed(pieces(b"a;", error=error))
        server = await serving(relayed)
        async with ClientSession() as session:
            async with session.post(server.make_url("/p")) as response:
                assert response.status == 200
                first, last = (await response.read()).split(b"\n")[:2]
            assert first == b"a;", "the error line starts a line of its own"
            assert json.loads(last) == {"code": 500, "type": "InternalServerException", "message": "ValueError: boom"}
            headers = {"Accept": "text/event-stream"}
            async with session.post(server.make_url("/p"), headers=headers) as response:
                body = await response.read()
            document = CODEC.error_document(500, "ValueError: boom")
            assert body == sse_event(b"a;") + b"event: error\n" + sse_event(json.dumps(document).encode())
        await server.close()
        assert relayed.statuses == [500, 500], "counted with the error's status"

    run(scenario())


def test_a_client_that_leaves_cancels_the_stream() -> None:
    async def endless(stream: PieceStream) -> None:
        while not stream.cancelled:
            if not stream.blocked:
                stream.put(InferResult(200, "", body=b"tick\n"))
            await asyncio.sleep(0.001)

    async def scenario() -> None:
        relayed = Relayed(endless)
        server = await serving(relayed)
        async with ClientSession() as session:
            response = await session.post(server.make_url("/p"))
            assert (await response.content.readline()) == b"tick\n"
            response.close()  # drop the connection mid-stream
        await asyncio.wait_for(relayed.cancelled.wait(), 10)
        await server.close()
        assert relayed.statuses == [499]

    run(scenario())
