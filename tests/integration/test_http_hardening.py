"""Malformed and slow HTTP clients: deadlines on every request phase, and the right status in the JSON error shape."""

from __future__ import annotations

import gzip
import json
import re
import select
import socket
import time
import zlib
from collections.abc import Iterator
from urllib.parse import urlsplit

import psutil
import pytest
from aiohttp import compression_utils

from tests.support.server import ServerProcess, call, make_archive, running_server, wait_for

BODY_TIMEOUT_S = 2.0
HEADER_TIMEOUT_S = 1.0
KEEP_ALIVE_S = 1.0
MAX_CONNECTIONS = 20
MAX_REQUEST_SIZE = 100_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("hardening")
    store = root / "model_store"
    store.mkdir()
    make_archive(store, "echo", "echo_handler.py", config_yaml="minWorkers: 1\n")
    make_archive(store, "header", "header_handler.py", config_yaml="minWorkers: 1\n")
    config = (
        f"header_timeout={HEADER_TIMEOUT_S}\nbody_timeout={BODY_TIMEOUT_S}\nkeep_alive_timeout={KEEP_ALIVE_S}\n"
        f"max_connections={MAX_CONNECTIONS}\nmax_request_size={MAX_REQUEST_SIZE}\n"
    )
    with running_server(root, store, ["echo.mar", "header.mar"], extra_args=["--ncs"], config=config) as running:
        yield running


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname, parts.port), timeout=10)


def read_reply(sock: socket.socket, within_s: float) -> bytes:
    """One response: until its Content-Length is complete, the server closes, or ``within_s`` passes."""
    deadline = time.monotonic() + within_s
    received = b""
    while time.monotonic() < deadline:
        head, sep, body = received.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        if sep and length and len(body) >= int(length.group(1)) and not head.startswith(b"HTTP/1.1 100"):
            break
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        received += chunk
    return received


def exchange(url: str, raw: bytes, within_s: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``raw`` on a fresh connection; the status, headers and body of the reply."""
    with connect(url) as sock:
        sock.sendall(raw)
        return parse_reply(read_reply(sock, within_s))


def parse_reply(reply: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines and lines[0].startswith("HTTP/"), reply[:200]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


def closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def slow_body_request(path: str, length: int = 100) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n".encode()


def test_a_body_trickled_one_byte_at_a_time_gets_408_after_body_timeout(server: ServerProcess) -> None:
    with connect(server.inference) as sock:
        sock.sendall(slow_body_request("/predictions/echo"))
        started = time.monotonic()
        reply = b""
        # one byte every 0.3 s: a deadline per read would never fire, the deadline on the whole body does
        while time.monotonic() - started < BODY_TIMEOUT_S + 5:
            try:
                sock.sendall(b"x")
            except (BrokenPipeError, ConnectionResetError):
                break
            readable, _, _ = select.select([sock], [], [], 0.3)
            if readable:
                reply = read_reply(sock, 3)
                break
        elapsed = time.monotonic() - started
    status, headers, body = parse_reply(reply)
    assert status == 408
    assert headers["connection"].lower() == "close"
    assert "body_timeout" in json.loads(body)["message"]
    assert BODY_TIMEOUT_S - 0.5 < elapsed < BODY_TIMEOUT_S + 3
    wait_for(lambda: "too slow" in server.log_text(), 5, "a warning line names the slow body")
    wait_for(lambda: bool(re.search(r" echo 1\.0 POST 408 ", server.log_text())), 5, "the access log says 408")


def test_slow_bodies_on_every_connection_cannot_lock_out_a_normal_client(server: ServerProcess) -> None:
    slow = []
    for _ in range(MAX_CONNECTIONS):
        sock = connect(server.inference)
        sock.sendall(slow_body_request("/predictions/echo") + b"x")
        slow.append(sock)
    started = time.monotonic()

    def served() -> bool:
        try:
            return call("POST", server.inference + "/predictions/echo", b"normal", timeout=1).body == b"normal"
        except OSError:
            return False

    # every slot is taken until the slow bodies hit their deadline; then the normal client is served at once
    wait_for(served, BODY_TIMEOUT_S + 4, "a normal client served once the slow bodies timed out", interval=0.1)
    assert time.monotonic() - started < BODY_TIMEOUT_S + 4
    assert all(closed_by_server(sock, 3) for sock in slow)
    for sock in slow:
        sock.close()


def test_an_idle_keep_alive_connection_is_closed(server: ServerProcess) -> None:
    with connect(server.inference) as sock:
        sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert closed_by_server(sock, KEEP_ALIVE_S + HEADER_TIMEOUT_S + 3)
        assert time.monotonic() - started < KEEP_ALIVE_S + HEADER_TIMEOUT_S + 3


def test_non_utf8_authorization_gets_401_with_www_authenticate(server: ServerProcess) -> None:
    raw = b"GET /models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xc3\x28\r\nConnection: close\r\n\r\n"
    before = len(server.lines)
    status, headers, body = exchange(server.management, raw)
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    assert json.loads(body)["code"] == 401
    assert not any("Traceback" in line for line in server.lines[before:])


def post_encoded(
    server: ServerProcess, encoding: str, body: bytes, path: str = "/predictions/echo"
) -> tuple[int, dict[str, str], bytes]:
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")  # fmt: skip
    return exchange(server.inference, head.encode() + body)


def test_a_plain_body_labelled_gzip_gets_400(server: ServerProcess) -> None:
    before = len(server.lines)
    status, _, body = post_encoded(server, "gzip", b"this is not gzip at all")
    assert status == 400
    assert "not valid gzip" in json.loads(body)["message"]
    status, _, body = post_encoded(server, "gzip", b"not gzip either", path="/v2/models/echo/infer")
    assert status == 400 and "not valid gzip" in json.loads(body)["error"]
    assert call("POST", server.inference + "/predictions/echo", b"alive").body == b"alive"
    assert not any("Traceback" in line for line in server.lines[before:])


def test_a_gzip_body_is_decoded_for_the_handler(server: ServerProcess) -> None:
    status, _, body = post_encoded(server, "gzip", gzip.compress(b"decoded for the handler"))
    assert (status, body) == (200, b"decoded for the handler")


def gzip_of_zeros(size: int) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    block = bytes(1 << 20)
    return b"".join(packer.compress(block) for _ in range(size >> 20)) + packer.flush()


def test_a_gzip_bomb_gets_413_and_costs_the_server_no_decoding_after_it(server: ServerProcess) -> None:
    bomb = gzip_of_zeros(1 << 30)  # 1 GiB of zeros in about 1 MB
    assert server.process is not None
    parent = psutil.Process(server.process.pid)
    before = len(server.lines)
    cpu_before = sum(parent.cpu_times()[:2])
    head = (f"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nContent-Encoding: gzip\r\n"
            f"Content-Length: {len(bomb)}\r\n\r\n").encode()  # fmt: skip
    started = time.monotonic()
    with connect(server.inference) as sock:
        sock.sendall(head + bomb)
        status, headers, _ = parse_reply(read_reply(sock, 10))
        answered = time.monotonic() - started
        # the connection stays open a while (the client may still be sending): nothing more is decoded meanwhile
        closed_by_server(sock, 2)
    cpu_used = sum(parent.cpu_times()[:2]) - cpu_before
    assert status == 413
    assert answered < 5
    assert cpu_used < 0.6, f"the server spent {cpu_used:.2f} s of CPU on a refused body"
    assert headers["connection"].lower() == "close"
    assert not any("Traceback" in line for line in server.lines[before:])


def test_an_unsupported_content_encoding_gets_415(server: ServerProcess) -> None:
    for encoding in ("compress", "x-gzip", "gzip, gzip"):
        status, _, body = post_encoded(server, encoding, b"whatever")
        assert status == 415
        assert encoding in json.loads(body)["message"]
    if not compression_utils.HAS_ZSTD:
        # aiohttp refuses zstd while parsing the headers when it cannot decode it: the same status and shape
        status, _, body = post_encoded(server, "zstd", b"whatever")
        assert status == 415 and json.loads(body)["code"] == 415


def test_header_limit_errors_are_json_with_one_warning_and_no_traceback(server: ServerProcess) -> None:
    before = len(server.lines)
    many = "".join(f"x-h{i}: v\r\n" for i in range(200))
    status, headers, body = exchange(server.inference, f"GET /ping HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode())
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert "too many headers" in json.loads(body)["message"].lower()
    raw = b"GET /ping HTTP/1.1\r\nHost: x\r\nx-long: " + b"a" * 20000 + b"\r\n\r\n"
    status, headers, body = exchange(server.inference, raw)
    assert status == 431
    assert json.loads(body)["code"] == 431

    def refusals() -> list[str]:
        # the earlier tests' refusals may reach the log late: count these two only
        return [line for line in server.lines[before:] if re.search(r"malformed request .*: (400|431) ", line)]

    wait_for(lambda: len(refusals()) >= 2, 5, "a warning line for each")
    logged = server.lines[before:]
    assert len(refusals()) == 2 and all("WARNING" in line for line in refusals()), refusals()
    assert not any("Traceback" in line or " ERROR " in line for line in logged), logged
    assert call("GET", server.inference + "/ping").status == 200


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"GET /ping HTTP/1.1\r\nHost: x\r\nX-\xff: 1\r\n\r\n", "invalid header token"),
        (b"GET /models/\xff HTTP/1.1\r\nHost: x\r\n\r\n", "invalid char in url"),
        (b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhi\r\n0\r\n\r\n",
         "chunk size"),
        (b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
         "duplicate content-length"),
    ],
)  # fmt: skip
def test_a_malformed_request_gets_400_in_the_json_shape_naming_the_problem(
    server: ServerProcess, raw: bytes, problem: str
) -> None:
    status, headers, body = exchange(server.inference, raw)
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    message = json.loads(body)["message"]
    assert problem in message.lower() and "\n" not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-Split", "one\r\nSet-Cookie: forged=1"), ("X-Newline", "a\nb"), ("Bad Name", "v"), ("Content-Type", "a\rb")],
)
def test_a_handler_header_with_cr_lf_or_a_bad_name_gets_500_and_is_logged_as_500(
    server: ServerProcess, name: str, value: str
) -> None:
    request_id = f"badheader-{abs(hash((name, value)))}"
    wanted = json.dumps({"name": name, "value": value}).encode()
    response = call("POST", server.inference + "/predictions/header", wanted,
                    {"Content-Type": "application/json", "x-request-id": request_id})  # fmt: skip
    assert response.status == 500
    assert "handler set an invalid header" in response.json()["message"]
    assert "set-cookie" not in response.headers
    wait_for(lambda: request_id in server.log_text(), 5, "the access line")
    assert re.search(rf"{request_id} header 1\.0 POST 500 ", server.log_text())
    good = call("POST", server.inference + "/predictions/header", b'{"name": "X-Fine", "value": "yes"}',
                {"Content-Type": "application/json"})  # fmt: skip
    assert good.status == 200 and good.headers["x-fine"] == "yes"


def test_expect_100_continue_with_an_oversized_length_gets_413_without_100(server: ServerProcess) -> None:
    raw = (f"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
           f"Content-Length: {MAX_REQUEST_SIZE + 1}\r\n\r\n").encode()  # fmt: skip
    with connect(server.inference) as sock:
        sock.sendall(raw)
        reply = read_reply(sock, 5)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:100]
    assert b"100 Continue" not in reply
    status, headers, body = parse_reply(reply)
    assert headers["x-request-id"]
    assert "larger than the limit" in json.loads(body)["message"]
    # within the limit the client is told to go on, then served
    with connect(server.inference) as sock:
        sock.sendall(b"POST /predictions/echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n"
                     b"Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n")  # fmt: skip
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(b"hello")
        status, _, body = parse_reply(read_reply(sock, 5))
    assert (status, body) == (200, b"hello")
