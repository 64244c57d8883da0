"""Routing shared by the three applications: a path with trailing slashes matches the route without them.

TorchServe splits a request path on ``/`` and ignores empty trailing parts, so ``DELETE /models/m/`` and
``POST /predictions/m/`` reach the same handlers as without the slash; its clients and scripts rely on that. Here one
resource, registered last in each router, catches every path that ends with ``/`` and matched nothing else, and
resolves it again without the slashes: every route gets the behaviour, including routes added later.
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute, UrlMappingMatchInfo, _InfoDict
from yarl import URL


class TrailingSlashResource(web.AbstractResource):
    """Resolves ``/a/b/`` (or ``/a/b//``) as ``/a/b``: the same handler, the same 405 with its ``Allow`` list."""

    def __init__(self, router: web.UrlDispatcher) -> None:
        super().__init__()
        self._router = router

    @property
    def canonical(self) -> str:
        return "/"  # consulted after every resource indexed under a longer prefix

    def url_for(self, **kwargs: str) -> URL:
        raise NotImplementedError("the trailing-slash resource builds no URLs")

    async def resolve(self, request: web.Request) -> tuple[UrlMappingMatchInfo | None, set[str]]:
        url = request.rel_url
        raw_path = url.raw_path
        if len(raw_path) < 2 or not raw_path.endswith("/"):
            return None, set()
        stripped = URL.build(path=raw_path.rstrip("/") or "/", query_string=url.raw_query_string, encoded=True)
        match = await self._router.resolve(request.clone(rel_url=stripped))
        error = match.http_exception
        if error is None:
            return match, set()
        if isinstance(error, web.HTTPMethodNotAllowed):
            return None, set(error.allowed_methods)
        return None, set()

    def add_prefix(self, prefix: str) -> None:
        raise NotImplementedError("the trailing-slash resource is not for sub-applications")

    def get_info(self) -> _InfoDict:
        return {"path": "/*/"}

    def raw_match(self, path: str) -> bool:
        return False

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[AbstractRoute]:
        return iter(())


def accept_trailing_slashes(app: web.Application) -> None:
    """Call once every route of ``app`` is added."""
    app.router.register_resource(TrailingSlashResource(app.router))
