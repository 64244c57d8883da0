"""Streamed answers end to end: handlers that return generators (or send TorchServe intermediate responses) in real
workers, relayed as chunked HTTP or server-sent events to real HTTP clients; backpressure, cancellation, errors
mid-stream, and streams in a batch beside a plain result."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.ray_nodes import backend_config
from tests.support.server import ServerProcess, call, make_archive, running_server, wait_for

JSON = {"Content-Type": "application/json"}
ONE_WORKER = "minWorkers: 1\nmaxWorkers: 1\n"


@pytest.fixture(scope="module", params=["local", pytest.param("ray", marks=[pytest.mark.ray, pytest.mark.slow])])
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """The same streaming suite on each worker backend (the Ray backend on a two-node cluster of this machine)."""
    work = tmp_path_factory.mktemp("streaming")
    store = work / "model_store"
    store.mkdir()
    release = work / "release"
    release.mkdir()
    make_archive(store, "gen", "streaming_handler.py", config_yaml=ONE_WORKER)
    make_archive(store, "stall", "streaming_handler.py", config_yaml=ONE_WORKER + "responseTimeout: 2\n")
    batched = f"{ONE_WORKER}batchSize: 3\nmaxBatchDelay: 5000\nhandler:\n  release_dir: {release}\n"
    make_archive(store, "batched", "streaming_handler.py", config_yaml=batched)
    make_archive(store, "tswait", "ts_style/waiting_stream_handler.py", config_yaml=ONE_WORKER)
    make_archive(store, "tsparts", "ts_style/stream_handler.py", config_yaml=ONE_WORKER)
    models = ["gen=gen.mar", "stall=stall.mar", "batched=batched.mar", "tswait=tswait.mar", "tsparts=tsparts.mar"]
    with contextlib.ExitStack() as stack:
        config = stack.enter_context(backend_config(request.param, work))
        yield stack.enter_context(running_server(work, store, models, extra_args=["--ncs"], config=config))


def connect(server: ServerProcess) -> http.client.HTTPConnection:
    parts = urlsplit(server.inference)
    return http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)


def start(
    server: ServerProcess, model: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = connect(server)
    conn.request("POST", f"/predictions/{model}", json.dumps(body).encode(), {**JSON, **(headers or {})})
    return conn, conn.getresponse()


def read_until(response: http.client.HTTPResponse, wanted: bytes) -> bytes:
    """Read chunk by chunk until ``wanted`` is in what came (the connection's timeout bounds the wait)."""
    got = b""
    while wanted not in got:
        chunk = response.read1(65536)
        if not chunk:
            raise AssertionError(f"stream ended before {wanted!r}; got {got!r}")
        got += chunk
    return got


def plain_pid(server: ServerProcess, model: str = "gen") -> int:
    response = server.predict(model, json.dumps({"mode": "plain"}).encode(), JSON)
    assert response.status == 200, response.text
    return int(response.json()["pid"])


def metric(server: ServerProcess, name: str, model: str) -> float:
    text = call("GET", server.metrics + "/metrics").text
    pattern = rf'^{name}\{{[^}}]*model_name="{model}"[^}}]*\}} ([0-9.e+-]+)$'
    values = [float(m.group(1)) for m in re.finditer(pattern, text, re.MULTILINE)]
    return sum(values)


def test_pieces_arrive_in_order_and_the_first_before_the_handler_finishes(
    server: ServerProcess, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    ok_before = metric(server, "modelserve_requests_total", "gen")
    firsts_before = metric(server, "modelserve_stream_first_piece_seconds_count", "gen")
    conn, response = start(server, "gen", {"mode": "count", "n": 100, "wait_for": str(go)})
    try:
        assert response.status == 200
        assert response.getheader("Transfer-Encoding") == "chunked"
        assert response.getheader("Content-Type") == "text/plain; charset=utf-8"
        first = read_until(response, b"piece 0\n")  # the generator waits for ``go``: it has not finished
        go.touch()
        body = first + response.read()
    finally:
        conn.close()
    assert body == b"".join(b"piece %d\n" % i for i in range(100))
    wait_for(
        lambda: metric(server, "modelserve_requests_total", "gen") == ok_before + 1, 10, "the stream is counted once"
    )
    assert metric(server, "modelserve_stream_first_piece_seconds_count", "gen") == firsts_before + 1


def test_server_sent_events_frame_each_piece(server: ServerProcess) -> None:
    conn, response = start(server, "gen", {"mode": "json", "n": 3}, {"Accept": "text/event-stream"})
    try:
        assert response.status == 200
        assert response.getheader("Content-Type") == "text/event-stream"
        body = response.read().decode()
    finally:
        conn.close()
    events = body.split("\n\n")
    assert events[-1] == "" and len(events) == 4, body
    assert [json.loads(e.removeprefix("data: ")) for e in events[:-1]] == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_a_ts_handler_streams_its_intermediate_responses(server: ServerProcess, tmp_path: Path) -> None:
    go = tmp_path / "ts-go"
    conn, response = start(server, "tswait", {"wait_for": str(go)})
    try:
        assert response.status == 200
        first = read_until(response, b"}")  # the handler waits for ``go`` after sending its part
        assert json.loads(first) == {"part": 0}
        go.touch()
        assert json.loads(response.read()) == {"final": True}
    finally:
        conn.close()
    response_sse = call("POST", server.inference + "/predictions/tsparts", b"go", {"Accept": "text/event-stream"})
    assert response_sse.text == "data: part 0;\n\ndata: part 1;\n\ndata: done\n\n"


def test_a_client_that_leaves_closes_the_generator_and_the_worker_serves_on(
    server: ServerProcess, tmp_path: Path
) -> None:
    pid = plain_pid(server)
    marker = tmp_path / "closed"
    conn, response = start(server, "gen", {"mode": "endless", "marker": str(marker)})
    read_until(response, b"tick\n")
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    wait_for(marker.exists, 20, "the generator's finally ran")
    assert plain_pid(server) == pid, "the same worker answers the next request"


def settled_count(path: Path, quiet_s: float = 1.0, timeout: float = 60.0) -> int:
    """The number in ``path`` once it has not changed for ``quiet_s`` (polled, with a deadline)."""
    deadline = time.monotonic() + timeout
    last: str | None = None
    since = time.monotonic()
    while time.monotonic() < deadline:
        value = path.read_text() if path.exists() else None
        now = time.monotonic()
        if value != last:
            last, since = value, now
        elif value is not None and now - since >= quiet_s:
            return int(value)
        time.sleep(0.05)
    raise AssertionError(f"the count in {path.name} kept changing (last {last})")


def unread_stream(server: ServerProcess, model: str, total: int, count: Path) -> socket.socket:
    """A client that asks ``model`` for ``total`` pieces of 64 KiB, with a small receive buffer, and reads nothing."""
    parts = urlsplit(server.inference)
    body = json.dumps({"mode": "big", "n": total, "size": 65536, "count_to": str(count)}).encode()
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    client.settimeout(30)
    client.connect((parts.hostname or "127.0.0.1", parts.port or 80))
    head = (
        f"POST /predictions/{model} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    client.sendall(head.encode() + body)
    return client


def test_a_slow_reader_pauses_the_generator(server: ServerProcess, tmp_path: Path) -> None:
    pid = plain_pid(server)
    count = tmp_path / "yielded"
    total = 2000
    client = unread_stream(server, "gen", total, count)
    try:
        yielded = settled_count(count)
        assert yielded < total // 5, f"the generator ran {yielded} pieces ahead of a reader that took none"
    finally:
        client.close()
    wait_for(lambda: plain_pid(server) == pid, 20, "the worker is free again once the reader left")


def test_a_reader_that_stops_reading_loses_its_stream_after_response_timeout(
    server: ServerProcess, tmp_path: Path
) -> None:
    pid = plain_pid(server, "stall")
    count = tmp_path / "yielded"
    total = 5000
    client = unread_stream(server, "stall", total, count)  # it reads nothing, nor leaves
    try:
        # responseTimeout is 2 s: the stalled stream is cancelled, and the one worker answers others while the
        # client still holds its connection
        wait_for(lambda: plain_pid(server, "stall") == pid, 30, "the worker is free while the reader still stalls")
        assert settled_count(count) < total // 5
        got = b""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            chunk = client.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        else:
            raise AssertionError("the server kept the stalled connection open")
        assert got.startswith(b"HTTP/1.1 200")
        assert not got.endswith(b"0\r\n\r\n"), "the stream was cut off, not ended as if complete"
    finally:
        client.close()


def test_a_piece_over_max_response_size_ends_the_stream_with_an_error(server: ServerProcess, tmp_path: Path) -> None:
    pid = plain_pid(server)
    count = tmp_path / "yielded"
    body = json.dumps({"mode": "big", "n": 50, "size": 7_000_000, "count_to": str(count)}).encode()
    response = server.predict("gen", body, JSON)
    assert response.status == 200, "the status went out before the piece came"
    error = json.loads(response.text.strip().rpartition("\n")[2])
    assert error["code"] == 500
    assert "streamed piece of 7000000 bytes exceeds max_response_size (6553500)" in error["message"]
    assert b"x" * 1000 not in response.body, "the oversized piece is not sent"
    assert settled_count(count) < 50, "the rest of the stream is cancelled in the worker"
    assert plain_pid(server) == pid


def test_an_error_mid_stream_ends_it_visibly_and_the_worker_survives(server: ServerProcess) -> None:
    pid = plain_pid(server)
    response = server.predict("gen", json.dumps({"mode": "fail", "after": 3}).encode(), JSON)
    assert response.status == 200, "the status went out with the first piece"
    pieces, _, last = response.text.rstrip("\n").rpartition("\n")
    assert pieces == "p0;p1;p2;"
    error = json.loads(last)
    assert error["code"] == 500 and "ValueError: broke mid-stream" in error["message"]
    events = call(
        "POST",
        server.inference + "/predictions/gen",
        json.dumps({"mode": "fail", "after": 1}).encode(),
        {**JSON, "Accept": "text/event-stream"},
    ).text
    assert events.startswith("data: p0;\n\nevent: error\ndata: ")
    assert "broke mid-stream" in json.loads(events.split("event: error\ndata: ", 1)[1])["message"]
    assert plain_pid(server) == pid


def test_a_batch_of_two_streams_and_a_plain_result(server: ServerProcess, tmp_path: Path) -> None:
    release = server.store.parent / "release"
    go = tmp_path / "streams-go"
    held = connect(server)
    held.request("POST", "/predictions/batched", b"hold:first")
    wait_for(lambda: "BUSY" in server.manage("GET", "/models/batched").text, 20, "the held batch is computing")
    stream_body = {"mode": "first_then", "wait_for": str(go)}
    conns = [connect(server) for _ in range(3)]
    for conn, body in zip(conns, (stream_body, {"mode": "plain"}, stream_body), strict=True):
        conn.request("POST", "/predictions/batched", json.dumps(body).encode(), JSON)
    try:
        # the three form one batch as soon as they are all there, armed behind the held one
        wait_for(lambda: metric(server, "modelserve_requests_in_flight", "batched") == 4, 20, "three requests batched")
        (release / "first").touch()
        assert held.getresponse().status == 200
        plain = conns[1].getresponse()
        assert plain.status == 200
        assert json.loads(plain.read())["batch_size"] == 3, "the three went as one batch"
        # the streams wait for ``go`` after their first piece: both have sent it, and the plain one was answered
        streams = [conns[0].getresponse(), conns[2].getresponse()]
        firsts = [read_until(s, b"first;") for s in streams]
        assert not go.exists()
        go.touch()
        assert [f + s.read() for f, s in zip(firsts, streams, strict=True)] == [b"first;last", b"first;last"]
    finally:
        (release / "first").touch()  # nothing stays held in the worker when the test fails
        go.touch()
        for conn in [held, *conns]:
            conn.close()
