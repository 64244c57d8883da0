"""The reference for the parent's cost per request: a bare aiohttp app on uvloop that reads a POST and answers it.

    python benchmarks/bare_aiohttp.py PORT

It takes the route of the server's inference API and answers with a fixed body the size of the W1 model's answer,
with the same event loop the server picks (uvloop when installed) and no access log: what a request costs in aiohttp
itself, before any of the server's own code.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from aiohttp import web

ANSWER = b"7"


async def predict(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, content_type="application/json")


def main() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    app = web.Application()
    app.router.add_post("/predictions/{model}", predict)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
