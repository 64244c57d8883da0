"""Bearer-token authorization for the management API (on by default), with a 0600 key file."""

from __future__ import annotations

import hmac
import json
import os
import secrets
from pathlib import Path

from aiohttp import web

from modelserve.server.errors import Handler, error_response

TOKEN_BYTES = 32


def write_key_file(path: Path) -> str:
    """Create a fresh management token and store it in ``path`` (mode 0600, never through a symlink)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    content = json.dumps({"management": {"key": token}}, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # O_EXCL and O_NOFOLLOW: never write through a planted link; the rename replaces a link, it does not follow it
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(content)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return token


def token_middleware(token: str) -> web.middleware:  # type: ignore[valid-type]
    expected = token.encode()

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        supplied = request.headers.get("Authorization", "")
        scheme, _, value = supplied.partition(" ")
        # header bytes that are not UTF-8 arrive as surrogates; they encode back to the bytes sent, never matching
        offered = value.strip().encode("utf-8", "surrogateescape")
        if scheme.lower() != "bearer" or not hmac.compare_digest(offered, expected):
            return error_response(
                401,
                "management API requires 'Authorization: Bearer <key>' (the key is in key_file.json); "
                "start with --disable-token-auth to turn this off",
                {"WWW-Authenticate": 'Bearer realm="modelserve-management"'},
            )
        return await handler(request)

    return check_token
