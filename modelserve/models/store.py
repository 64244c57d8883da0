"""The model store: resolving a registration ``url`` to an archive on disk, and default-deny URL downloads."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult

from modelserve.errors import ForbiddenError, InvalidRequestError, ModelNotFoundError
from modelserve.models.urls import RemoteUrl, check_url_allowed, looks_like_url, parse_remote_url

ARCHIVE_SUFFIXES = (".mar", ".tar.gz", ".tgz", ".zip")
MAX_REDIRECTS = 5
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)


def archive_stem(file_name: str) -> str:
    """The model name an archive's file name suggests: the name without its archive suffix."""
    for suffix in ARCHIVE_SUFFIXES:
        if file_name.endswith(suffix):
            return file_name[: -len(suffix)]
    return file_name


@dataclass(frozen=True)
class ModelSource:
    """Where a version's archive came from: ``url`` as shown (normalised, credentials redacted), ``path`` on disk."""

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
    """A ``scheme://`` value: a URL to download (refused unless http or https), not a file of the model store."""
    return looks_like_url(url)


@dataclass(frozen=True)
class DownloadLimits:
    """Bounds of one download: its size, a total deadline, and how long connecting and each read may wait."""

    max_bytes: int
    total_s: float
    connect_s: float = 10.0
    idle_s: float = 30.0


class PinnedResolver(AbstractResolver):
    """Answers only with the addresses checked just before: no second lookup between the check and the connect."""

    def __init__(self) -> None:
        self.pinned: dict[tuple[str, int], list[ResolveResult]] = {}

    async def pin(self, url: RemoteUrl) -> None:
        """Resolve ``url``'s host once, refuse forbidden addresses, and keep the answer for the connection."""
        if _is_ip_literal(url.host):
            _check_address(url.host, ipaddress.ip_address(url.host))
            return
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(url.host, url.port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise InvalidRequestError(f"cannot resolve {url.host}: {exc.strerror or exc}") from None
        results: list[ResolveResult] = []
        for family, _, proto, _, address in infos:
            _check_address(url.host, ipaddress.ip_address(address[0]))
            results.append({"hostname": url.host, "host": str(address[0]), "port": url.port, "family": family,
                            "proto": proto, "flags": socket.AI_NUMERICHOST})  # fmt: skip
        self.pinned[(url.host, url.port)] = results

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = self.pinned.get((host, port))
        if not found:
            raise OSError(f"{host}:{port} was not checked before connecting")
        return found

    async def close(self) -> None:
        return None


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_address(host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    if address.is_unspecified or address.is_multicast:
        raise ForbiddenError(f"{host} resolves to a forbidden address {address}")


def basic_auth_for(current: RemoteUrl, first: RemoteUrl) -> dict[str, str]:
    """The Authorization header for ``current``: credentials go only to the origin they were written for (a redirect
    elsewhere does not get them)."""
    owner = current if current.has_credentials else first if current.origin == first.origin else None
    if owner is None or not owner.has_credentials:
        return {}
    if ":" in (owner.username or ""):
        raise InvalidRequestError("url credentials cannot be sent: the user name contains ':'")
    return {"Authorization": aiohttp.encode_basic_auth(owner.username or "", owner.password or "")}


async def download(url: str, allowed_patterns: list[str], dest_dir: Path, limits: DownloadLimits) -> ModelSource:
    """Fetch an archive over HTTP(S): every hop normalised and checked against ``allowed_urls`` before it is requested.

    The URL requested is exactly the normalised one that was checked. Every way it can fail has its own message: a
    host that does not accept or does not answer, a download that stalls, runs past the total deadline or grows past
    ``max_archive_size``.
    """
    first = parse_remote_url(url)
    check_url_allowed(first, allowed_patterns)
    try:
        return await asyncio.wait_for(_fetch(first, allowed_patterns, dest_dir, limits), limits.total_s)
    except asyncio.TimeoutError:
        # the per-phase timeouts are turned into their own messages inside: this one is the total deadline
        raise InvalidRequestError(
            f"download of {first.display!r} exceeded {limits.total_s:g} s total (url_download_timeout)"
        ) from None


async def _fetch(first: RemoteUrl, allowed_patterns: list[str], dest_dir: Path, limits: DownloadLimits) -> ModelSource:
    resolver = PinnedResolver()
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=limits.connect_s, sock_read=limits.idle_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        current = first
        for _ in range(MAX_REDIRECTS + 1):
            await resolver.pin(current)
            answered = False
            try:
                target = yarl.URL(current.canonical, encoded=True)
                async with session.get(
                    target, allow_redirects=False, headers=basic_auth_for(current, first)
                ) as response:
                    answered = True
                    if response.status in _REDIRECT_STATUSES:
                        location = response.headers.get("Location")
                        if not location:
                            raise InvalidRequestError(f"{current.display!r} redirects without a Location header")
                        current = current.join(location)
                        check_url_allowed(current, allowed_patterns)
                        continue
                    if response.status != 200:
                        raise InvalidRequestError(f"download of {current.display!r} failed with HTTP {response.status}")
                    return await _save(first, current, response, dest_dir, limits.max_bytes)
            except aiohttp.ConnectionTimeoutError:
                raise InvalidRequestError(
                    f"could not connect to {current.authority} within {limits.connect_s:g} s"
                ) from None
            except aiohttp.ServerTimeoutError:
                if not answered:
                    raise InvalidRequestError(
                        f"no response from {current.authority} within {limits.idle_s:g} s"
                    ) from None
                raise InvalidRequestError(
                    f"download from {current.authority} stalled: no data for {limits.idle_s:g} s"
                ) from None
            except aiohttp.ClientError as exc:
                raise InvalidRequestError(
                    f"download of {current.display!r} failed: {exc or type(exc).__name__}"
                ) from None
    raise InvalidRequestError(f"too many redirects (more than {MAX_REDIRECTS}) fetching {first.display!r}")


async def _save(
    first: RemoteUrl, current: RemoteUrl, response: aiohttp.ClientResponse, dest_dir: Path, max_bytes: int
) -> ModelSource:
    too_big = f"archive at {current.display!r} is larger than max_archive_size ({max_bytes} bytes)"
    if (response.content_length or 0) > max_bytes:
        raise InvalidRequestError(too_big)
    # the file name only keeps the suffix the reader may look at; it is never trusted as a path
    name = os.path.basename(current.path)[-64:] or "model.mar"
    fd, temp = tempfile.mkstemp(prefix="download-", suffix="-" + name, dir=dest_dir)
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in response.content.iter_chunked(1 << 20):
                written += len(chunk)
                if written > max_bytes:
                    raise InvalidRequestError(too_big)
                out.write(chunk)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return ModelSource(url=first.display, path=Path(temp), downloaded=True)
