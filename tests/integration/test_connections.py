"""Bad clients: slow headers, too many connections, oversized or too many headers, and CORS defaults."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.support.server import ServerProcess, call, make_archive, running_server, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("connections")
    store = root / "model_store"
    store.mkdir()
    make_archive(store, "echo", "echo_handler.py", config_yaml="minWorkers: 1\n")
    config = "header_timeout=1\nmax_connections=20\n"
    with running_server(root, store, ["echo.mar"], extra_args=["--ncs"], config=config) as running:
        yield running


def connect(server: ServerProcess) -> socket.socket:
    parts = urlsplit(server.inference)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1024) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_slow_headers_are_dropped_after_the_deadline(server: ServerProcess) -> None:
    slow = [connect(server) for _ in range(5)]
    for sock in slow:
        sock.sendall(b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\n")  # and then nothing more
    started = time.monotonic()
    assert server.predict("echo", b"still served").body == b"still served"
    assert all(closed_by_server(sock, 5) for sock in slow)
    assert time.monotonic() - started < 6
    for sock in slow:
        sock.close()


def test_connection_cap_holds_and_frees(server: ServerProcess) -> None:
    idle = []
    for _ in range(25):
        sock = connect(server)
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        idle.append(sock)
    refused = [sock for sock in idle if closed_by_server(sock, 0.5)]
    assert len(refused) >= 5, "connections over the cap are closed at once"
    for sock in idle:
        sock.close()

    def served() -> bool:
        try:
            return call("GET", server.inference + "/ping", timeout=2).status == 200
        except OSError:
            return False

    wait_for(served, 10, "served again after the burst")


def test_too_many_or_too_long_headers_get_400(server: ServerProcess) -> None:
    many = "".join(f"x-h{i}: v\r\n" for i in range(200))
    with connect(server) as sock:
        sock.sendall(f"GET /ping HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode())
        reply = sock.recv(4096)
        assert reply.split(b"\r\n", 1)[0].endswith(b" 400 Bad Request") and b"headers" in reply.lower()
    with connect(server) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nx-long: " + b"a" * 20000 + b"\r\n\r\n")
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
        assert status_line.split(b" ")[1] in (b"400", b"431"), status_line
    assert call("GET", server.inference + "/ping").status == 200


def test_foreign_origin_gets_no_cors_grant_by_default(server: ServerProcess) -> None:
    response = call("GET", server.management + "/models", headers={**server.auth(), "Origin": "https://evil.example"})
    assert response.status == 200
    assert "access-control-allow-origin" not in response.headers
    preflight = call("OPTIONS", server.management + "/models", headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "DELETE"})  # fmt: skip
    assert "access-control-allow-origin" not in preflight.headers


def test_configured_origin_is_granted(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("cors")
    store = root / "model_store"
    store.mkdir()
    config = "cors_allowed_origin=https://app.example\n"
    with running_server(root, store, [], extra_args=["--ncs"], config=config) as server:
        granted = call("GET", server.inference + "/ping", headers={"Origin": "https://app.example"})
        assert granted.headers["access-control-allow-origin"] == "https://app.example"
        other = call("GET", server.inference + "/ping", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        preflight = call("OPTIONS", server.inference + "/predictions/x", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})  # fmt: skip
        assert preflight.status == 204 and "POST" in preflight.headers["access-control-allow-methods"]
