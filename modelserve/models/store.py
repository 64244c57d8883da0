"""The model store: resolving a registration ``url`` to an archive on disk, and default-deny URL downloads."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from modelserve.errors import ForbiddenError, InvalidRequestError, ModelNotFoundError

ARCHIVE_SUFFIXES = (".mar", ".tar.gz", ".tgz", ".zip")
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class ModelSource:
    """Where a version's archive came from: ``url`` as the user gave it, ``path`` on disk."""

    url: str
    path: Path
    downloaded: bool = False


class ModelStore:
    def __init__(self, root: Path | None) -> None:
        self.root = root.resolve() if root is not None else None

    def list_archives(self) -> list[str]:
        """Every archive (or model directory) in the store, by file name."""
        if self.root is None or not self.root.is_dir():
            return []
        names = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith("."):
                continue
            if (entry.is_file() and entry.name.endswith(ARCHIVE_SUFFIXES)) or (
                entry.is_dir() and (entry / "MAR-INF" / "MANIFEST.json").is_file()
            ):
                names.append(entry.name)
        return names

    def resolve(self, url: str) -> ModelSource:
        """A file or directory name directly inside the model store."""
        if not url or not url.strip():
            raise InvalidRequestError("parameter 'url' is required")
        if self.root is None:
            raise InvalidRequestError("no model store is configured (start with --model-store DIR)")
        name = url.strip()
        if "/" in name or "\\" in name or name in (".", "..") or "\x00" in name:
            raise InvalidRequestError(f"url {url!r} must be a file name inside the model store, not a path")
        path = self.root / name
        if not path.exists():
            raise ModelNotFoundError(f"model archive {name!r} not found in the model store")
        if path.is_symlink() and not path.resolve().is_relative_to(self.root):
            raise ForbiddenError(f"{name!r} is a link that leaves the model store")
        return ModelSource(url=name, path=path)


def is_remote(url: str) -> bool:
    return urlsplit(url).scheme in ("http", "https")


def check_url_allowed(url: str, allowed_patterns: list[str]) -> None:
    """Default deny: the URL must match one of ``allowed_urls`` (regular expressions, whole-string match)."""
    if not allowed_patterns:
        raise ForbiddenError("registering models from URLs is disabled (allowed_urls is empty)")
    for pattern in allowed_patterns:
        try:
            if re.fullmatch(pattern, url):
                return
        except re.error:
            continue
    raise ForbiddenError(f"url {url!r} does not match allowed_urls")


async def _resolves_to_allowed_address(host: str) -> None:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise InvalidRequestError(f"cannot resolve {host}: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if address.is_unspecified or address.is_multicast:
            raise ForbiddenError(f"{host} resolves to a forbidden address {address}")


async def download(
    url: str, allowed_patterns: list[str], dest_dir: Path, max_bytes: int, timeout_s: float
) -> ModelSource:
    """Fetch an archive over HTTP(S), checking every hop against ``allowed_urls`` before any byte is written."""
    import aiohttp
    import yarl

    check_url_allowed(url, allowed_patterns)
    current = url
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(MAX_REDIRECTS + 1):
            parts = urlsplit(current)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ForbiddenError(f"redirect to unsupported url {current!r}")
            await _resolves_to_allowed_address(parts.hostname)
            try:
                async with session.get(current, allow_redirects=False) as response:
                    if response.status in (301, 302, 303, 307, 308):
                        location = response.headers.get("Location", "")
                        current = str(response.url.join(yarl.URL(location)))
                        check_url_allowed(current, allowed_patterns)
                        continue
                    if response.status != 200:
                        raise InvalidRequestError(f"download of {url!r} failed with HTTP {response.status}")
                    if (response.content_length or 0) > max_bytes:
                        raise InvalidRequestError(f"archive at {url!r} is larger than {max_bytes} bytes")
                    name = os.path.basename(parts.path) or "model.mar"
                    fd, temp = tempfile.mkstemp(prefix="download-", suffix="-" + name, dir=dest_dir)
                    written = 0
                    try:
                        with os.fdopen(fd, "wb") as out:
                            async for chunk in response.content.iter_chunked(1 << 20):
                                written += len(chunk)
                                if written > max_bytes:
                                    raise InvalidRequestError(f"archive at {url!r} is larger than {max_bytes} bytes")
                                out.write(chunk)
                    except BaseException:
                        Path(temp).unlink(missing_ok=True)
                        raise
                    return ModelSource(url=url, path=Path(temp), downloaded=True)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise InvalidRequestError(f"download of {url!r} failed: {exc or type(exc).__name__}") from None
    raise InvalidRequestError(f"too many redirects fetching {url!r}")
