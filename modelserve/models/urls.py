"""Registration URLs: parsed and normalised once, matched on their normalised parts, shown without credentials.

A rule of ``allowed_urls`` never sees the string the user typed. It sees the URL rebuilt from its parsed parts:
lower-case ``http``/``https`` scheme, the host lower-case (IDNA for non-ASCII names, dotted quads for IPv4 in any
notation, compressed IPv6), an explicit port, the path with percent-encoding normalised and dot-segments removed, the
query, no user information and no fragment. That rebuilt URL is also exactly the one fetched, so what was checked is
what is requested (``/ok/../x.mar`` is ``/x.mar`` for both, and ``http://a@b/`` is a request to ``b`` for both).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import string
from dataclasses import dataclass, field
from urllib.parse import unquote, urljoin, urlsplit

from modelserve.errors import ForbiddenError, InvalidRequestError

DEFAULT_PORTS = {"http": 80, "https": 443}
REDACTED = "***"
_URL_LIKE = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# characters a path or query may hold unencoded (RFC 3986 pchar, plus "/" and "?")
_PATH_SAFE = _UNRESERVED | frozenset("!$&'()*+,;=:@/")
_QUERY_SAFE = _PATH_SAFE | frozenset("?")
_HOST_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_\-]{0,61}[a-z0-9_])?$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")
# percent-encoded bytes refused in a path: servers disagree on whether an encoded slash separates segments, and a
# rule over ``/ok/..%2Fx.mar`` must not be read one way here and another way by the origin
_REFUSED_IN_PATH = {"%2F": "an encoded '/'", "%5C": "an encoded '\\'", "%00": "an encoded NUL"}


@dataclass(frozen=True)
class RemoteUrl:
    """One normalised http(s) URL. ``username``/``password`` are kept for the request only and never shown."""

    scheme: str
    host: str
    port: int
    path: str
    query: str = ""
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def canonical(self) -> str:
        """The URL that rules are matched against and that is fetched: no credentials, explicit port."""
        return f"{self.scheme}://{self.authority}{self.path}" + (f"?{self.query}" if self.query else "")

    @property
    def display(self) -> str:
        """What describe, the snapshot and the log show: the canonical URL, credentials replaced by ``***``."""
        if self.username is None and self.password is None:
            return self.canonical
        return f"{self.scheme}://{REDACTED}@{self.canonical.split('://', 1)[1]}"

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def has_credentials(self) -> bool:
        return self.username is not None or self.password is not None

    def match_forms(self) -> list[str]:
        """The canonical URL, and for a default port also the same URL without it (``https://h/x`` rules)."""
        forms = [self.canonical]
        if DEFAULT_PORTS[self.scheme] == self.port:
            host = f"[{self.host}]" if ":" in self.host else self.host
            forms.append(f"{self.scheme}://{host}{self.path}" + (f"?{self.query}" if self.query else ""))
        return forms

    def join(self, location: str) -> RemoteUrl:
        """A redirect's ``Location`` resolved against this URL, normalised the same way."""
        return parse_remote_url(urljoin(self.canonical, location.strip()))


def looks_like_url(value: str) -> bool:
    """``scheme://...`` of any scheme: such a value is a URL (refused unless http/https), never a store file name."""
    return bool(_URL_LIKE.match(value))


def parse_remote_url(raw: str) -> RemoteUrl:
    """Parse and normalise ``raw``; raise InvalidRequestError (malformed) or ForbiddenError (not http/https)."""
    for char in raw:
        if ord(char) < 0x21 or ord(char) == 0x7F:
            raise InvalidRequestError("url contains a space or control character; percent-encode it")
        if char == "\\":
            raise InvalidRequestError("url contains a backslash, which clients and servers read differently")
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ForbiddenError(f"only http and https URLs can be registered, not {scheme or 'a relative'!r} ones")
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    host, port = _split_host_port(hostinfo, scheme)
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username, password = unquote(user), (unquote(secret) if colon else None)
    return RemoteUrl(
        scheme=scheme,
        host=host,
        port=port,
        path=_remove_dot_segments(_normalise_percent(parts.path or "/", _PATH_SAFE, in_path=True)),
        query=_normalise_percent(parts.query, _QUERY_SAFE, in_path=False),
        username=username,
        password=password,
    )


def _split_host_port(hostinfo: str, scheme: str) -> tuple[str, int]:
    if hostinfo.startswith("["):
        end = hostinfo.find("]")
        if end < 0:
            raise InvalidRequestError("url has an unterminated IPv6 address")
        literal, rest = hostinfo[1:end], hostinfo[end + 1 :]
        if "%" in literal:
            raise InvalidRequestError("url names an IPv6 zone, which is not supported")
        try:
            host = ipaddress.IPv6Address(literal).compressed
        except ValueError:
            raise InvalidRequestError(f"url has an invalid IPv6 address {literal!r}") from None
        if rest and not rest.startswith(":"):
            raise InvalidRequestError("url has characters after its IPv6 address")
        port_text = rest[1:]
    else:
        name, colon, port_text = hostinfo.partition(":")
        if colon and ":" in port_text:
            raise InvalidRequestError("url has more than one ':' in its host (IPv6 addresses go in brackets)")
        host = _normalise_host(name)
    if not port_text:
        return host, DEFAULT_PORTS[scheme]
    if not port_text.isascii() or not port_text.isdigit():
        # not echoed: an unencoded "/" in a password makes the rest of it look like a port
        raise InvalidRequestError("url has an invalid port (not a number)")
    if not 0 < int(port_text) < 65536:
        raise InvalidRequestError(f"url has an invalid port {port_text} (not from 1 to 65535)")
    return host, int(port_text)


def _normalise_host(name: str) -> str:
    if "%" in name:
        raise InvalidRequestError("url has a percent-encoded host name; write it plainly")
    host = name[:-1] if name.endswith(".") else name  # "example.com." is "example.com"
    if not host:
        raise InvalidRequestError("url has no host")
    if not host.isascii():
        import idna

        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise InvalidRequestError(f"url has an invalid international host name: {exc}") from None
    host = host.lower()
    labels = host.split(".")
    if _NUMERIC_LABEL.match(labels[-1]):
        # every IPv4 notation a resolver accepts (127.1, 0x7f.0.0.1, 2130706433) becomes the dotted quad
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            raise InvalidRequestError(f"url has an invalid IPv4 address {name!r}") from None
    if len(host) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        raise InvalidRequestError(f"url has an invalid host name {name!r}")
    return host


def _normalise_percent(text: str, safe: frozenset[str], in_path: bool) -> str:
    """Decode encoded unreserved characters, upper-case the hex of the rest, encode what may not stand unencoded."""
    out: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "%":
            hex_digits = text[index + 1 : index + 3]
            if len(hex_digits) < 2 or not all(c in string.hexdigits for c in hex_digits):
                raise InvalidRequestError("url has a '%' that does not start a percent-encoded byte")
            encoded = "%" + hex_digits.upper()
            if in_path and encoded in _REFUSED_IN_PATH:
                raise InvalidRequestError(f"url path contains {_REFUSED_IN_PATH[encoded]}, which is refused")
            decoded = chr(int(hex_digits, 16))
            out.append(decoded if decoded in _UNRESERVED else encoded)
            index += 3
            continue
        if char in safe:
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
        index += 1
    return "".join(out)


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 for an absolute path: ``/a/./b/../c`` -> ``/a/c``; never above the root."""
    if not path.startswith("/"):
        path = "/" + path
    segments = path.split("/")[1:]
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    trailing = "/" if segments and segments[-1] in (".", "..") and kept else ""
    return "/" + "/".join(kept) + trailing


def check_url_allowed(url: RemoteUrl, allowed_patterns: list[str]) -> None:
    """Default deny: one of ``allowed_urls`` (regular expressions, whole match) must match the normalised URL."""
    if not allowed_patterns:
        raise ForbiddenError("registering models from URLs is disabled (allowed_urls is empty)")
    for pattern in allowed_patterns:
        try:
            if any(re.fullmatch(pattern, form) for form in url.match_forms()):
                return
        except re.error:
            continue
    raise ForbiddenError(f"url {url.display!r} does not match allowed_urls")
