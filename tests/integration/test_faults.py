"""Faults the server must survive (RELIABILITY.md), each against a real server process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.ray_nodes import backend_config
from tests.support.server import Response, ServerProcess, call, make_archive, running_server, wait_for


@pytest.fixture(scope="module", params=["local", pytest.param("ray", marks=[pytest.mark.ray, pytest.mark.slow])])
def server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """The same fault cases on each worker backend (the Ray backend on a two-node cluster of this machine)."""
    root = tmp_path_factory.mktemp("faults")
    store = root / "model_store"
    store.mkdir()
    one = "minWorkers: 1\nmaxWorkers: 1\n"
    make_archive(store, "sleepy", "sleep_handler.py", config_yaml=one + "responseTimeout: 2\n")
    make_archive(store, "crashy", "crash_handler.py", config_yaml=one)
    make_archive(store, "wrong", "wrong_length_handler.py", config_yaml=one)
    make_archive(store, "broken", "fail_init_handler.py", config_yaml=one)
    make_archive(store, "echo", "echo_handler.py", config_yaml=one)
    make_archive(store, "tiny_queue", "sleep_handler.py", config_yaml=one + "jobQueueSize: 3\n")
    record = root / "seen.txt"
    make_archive(store, "recorder", "batch_handler.py",
                 config_yaml=one + f"handler:\n  record_to: {record}\n  pause_s: 0.8\n")  # fmt: skip
    # a partial batch waits up to 10 s for company while the worker is busy: a lone request stays in the queue
    make_archive(store, "gate", "gate_handler.py",
                 config_yaml=one + f"batchSize: 4\nmaxBatchDelay: 10000\nhandler:\n  record_to: {root / 'gate.txt'}\n"
                 f"  release_dir: {root / 'release'}\n")  # fmt: skip
    (root / "release").mkdir()
    models = ["sleepy.mar", "crashy.mar", "wrong.mar", "broken.mar", "echo.mar", "tiny_queue.mar", "recorder.mar",
              "gate.mar"]  # fmt: skip
    with contextlib.ExitStack() as stack:
        backend = stack.enter_context(backend_config(request.param, root, cpus=5))
        config = "max_request_size=1000\n" + backend
        yield stack.enter_context(running_server(root, store, models, extra_args=["--ncs"], config=config))


def describe(server: ServerProcess, model: str) -> dict[str, object]:
    result = server.manage("GET", f"/models/{model}").json()[0]
    assert isinstance(result, dict)
    return result


def worker_pid(server: ServerProcess, model: str) -> int:
    """The pid of the model's worker, once it has one (a Ray actor's is known when the actor has started)."""
    wait_for(lambda: isinstance(w := describe(server, model)["workers"], list) and bool(w) and w[0]["pid"] is not None,
             30, f"{model}'s worker has a pid")  # fmt: skip
    workers = describe(server, model)["workers"]
    assert isinstance(workers, list) and workers
    return int(workers[0]["pid"])


def killed(server: ServerProcess, message: str) -> bool:
    """Whether an error message says the worker was killed: by which signal where the parent saw the exit (local
    processes); a Ray actor's node reports only that its process died."""
    if "worker_backend=ray" in server.config_text:
        return "worker process has died (SYSTEM_ERROR" in message
    return "SIGKILL" in message


def metric(server: ServerProcess, name: str, model: str, extra_labels: str = "") -> float:
    """The value of one series of ``model`` version 1.0 on /metrics (0 when the series is not there yet)."""
    series = f'{name}{{model_name="{model}",model_version="1.0"{extra_labels}}} '
    text = call("GET", server.metrics + "/metrics").text
    return float(text.split(series)[1].split()[0]) if series in text else 0.0


def pending(server: ServerProcess, model: str) -> int:
    status = describe(server, model)["jobQueueStatus"]
    assert isinstance(status, dict)
    return int(status["pendingRequests"])


def gate_batches(server: ServerProcess) -> list[list[str]]:
    """The batches the gate handler has received so far, as lists of request ids."""
    record = server.workdir / "gate.txt"
    return [line.split() for line in record.read_text().splitlines()] if record.exists() else []


def release(server: ServerProcess, name: str) -> None:
    (server.workdir / "release" / name).touch()


def send_raw(server: ServerProcess, model: str, request_id: str) -> socket.socket:
    """Send one request on a raw connection and return it unread (the test hangs up by closing it)."""
    parts = urlsplit(server.inference)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
    sock.sendall(f"POST /predictions/{model} HTTP/1.1\r\nHost: x\r\nx-request-id: {request_id}\r\n"
                 "Content-Length: 1\r\n\r\nq".encode())  # fmt: skip
    return sock


def wait_ready(server: ServerProcess, model: str, timeout: float = 30) -> None:
    def ready() -> bool:
        workers = describe(server, model)["workers"]
        return isinstance(workers, list) and any(w["status"] == "READY" for w in workers)

    wait_for(ready, timeout, f"{model} has a ready worker")


def test_sigkill_mid_request_fails_promptly_then_recovers(server: ServerProcess) -> None:
    pid = worker_pid(server, "sleepy")
    results: list[tuple[Response, float]] = []

    def slow() -> None:
        results.append((server.predict("sleepy", b"1.5"), time.monotonic()))

    thread = threading.Thread(target=slow)
    thread.start()
    wait_for(lambda: describe(server, "sleepy")["workers"][0]["status"] == "BUSY", 10, "busy")  # type: ignore[index]
    os.kill(pid, signal.SIGKILL)
    killed_at = time.monotonic()
    thread.join(30)
    response, finished_at = results[0]
    assert response.status == 500
    message = response.json()["message"]
    assert "died" in message and killed(server, message)
    # the handler would have answered 1.5 s after it started, the response timeout fired after 2 s
    assert finished_at - killed_at < 1.0, "the request fails when the worker dies, not when the handler would finish"
    wait_ready(server, "sleepy")
    assert worker_pid(server, "sleepy") != pid
    assert server.predict("sleepy", b"0").status == 200


def test_batch_queued_at_a_dying_worker_is_served_by_its_replacement(server: ServerProcess) -> None:
    pid = worker_pid(server, "sleepy")
    results: dict[str, Response] = {}

    def send(name: str, body: bytes) -> None:
        results[name] = server.predict("sleepy", body)

    computing = threading.Thread(target=send, args=("computing", b"3"))
    computing.start()
    wait_for(lambda: describe(server, "sleepy")["workers"][0]["status"] == "BUSY", 10, "busy")  # type: ignore[index]
    waiting = threading.Thread(target=send, args=("waiting", b"0"))
    waiting.start()
    wait_for(lambda: metric(server, "modelserve_requests_in_flight", "sleepy") == 2, 10, "both handed to the worker")
    os.kill(pid, signal.SIGKILL)
    computing.join(30)
    waiting.join(30)
    assert results["computing"].status == 500 and killed(server, results["computing"].json()["message"])
    # the second batch was waiting for the worker, never sent to it: it goes back to the queue, not to the client
    assert results["waiting"].status == 200, results["waiting"].text
    assert results["waiting"].json()["pid"] not in (pid, None)


def test_repeated_crashes_never_hang(server: ServerProcess) -> None:
    for _ in range(3):
        wait_ready(server, "crashy")
        response = server.predict("crashy", b"crash", timeout=20)
        assert response.status == 500 and killed(server, response.json()["message"])
    wait_ready(server, "crashy")
    assert server.predict("crashy", b"ok").status == 200
    metrics = call("GET", server.metrics + "/metrics").text
    assert 'modelserve_worker_restarts_total{model_name="crashy",model_version="1.0"} 3.0' in metrics


def test_handler_that_raises_gives_500_and_worker_stays(server: ServerProcess) -> None:
    wait_ready(server, "crashy")
    pid = worker_pid(server, "crashy")
    response = server.predict("crashy", b"raise")
    assert response.status == 500
    assert response.json()["message"] == "RuntimeError: the handler raised on purpose"
    assert "Traceback" not in response.text
    assert worker_pid(server, "crashy") == pid
    assert "Traceback" in server.log_text(), "the traceback goes to the log"


def test_memory_error_gives_507(server: ServerProcess) -> None:
    wait_ready(server, "crashy")
    response = server.predict("crashy", b"oom")
    assert response.status == 507 and "cannot allocate" in response.json()["message"]
    assert server.predict("echo", b"fine").status == 200


def test_wrong_number_of_results_is_a_clear_500(server: ServerProcess) -> None:
    response = server.predict("wrong", b"x")
    assert response.status == 500
    assert "returned 2 results for a batch of 1" in response.json()["message"]


def test_hang_past_response_timeout_gives_504_then_recovers(server: ServerProcess) -> None:
    wait_ready(server, "sleepy")
    pid = worker_pid(server, "sleepy")
    started = time.monotonic()
    response = server.predict("sleepy", b"30")
    elapsed = time.monotonic() - started
    assert response.status == 504
    assert "responseTimeout" in response.json()["message"]
    assert 2.0 <= elapsed < 6.0
    wait_ready(server, "sleepy")
    assert worker_pid(server, "sleepy") != pid
    assert server.predict("sleepy", b"0").status == 200


def test_batch_waiting_behind_a_hung_handler_is_served_after_the_504(server: ServerProcess) -> None:
    wait_ready(server, "sleepy")
    pid = worker_pid(server, "sleepy")
    results: dict[str, Response] = {}

    def send(name: str, body: bytes) -> None:
        results[name] = server.predict("sleepy", body)

    hung = threading.Thread(target=send, args=("hung", b"30"))
    hung.start()
    wait_for(lambda: describe(server, "sleepy")["workers"][0]["status"] == "BUSY", 10, "busy")  # type: ignore[index]
    behind = threading.Thread(target=send, args=("behind", b"0"))
    behind.start()
    wait_for(lambda: metric(server, "modelserve_requests_in_flight", "sleepy") == 2, 10, "behind waits at the worker")
    assert "hung" not in results, "behind was queued while the handler hung"
    hung.join(30)
    behind.join(30)
    assert results["hung"].status == 504
    assert results["behind"].status == 200, results["behind"].text
    assert results["behind"].json()["pid"] != pid, "answered by the replacement worker"


def test_failing_initialize_ends_failed_while_others_serve(server: ServerProcess) -> None:
    wait_for(lambda: describe(server, "broken")["status"] == "FAILED", 60, "broken is FAILED")
    described = describe(server, "broken")
    assert "weights are corrupt" in str(described["error"])
    response = server.predict("broken", b"x")
    assert response.status == 503 and "failed to load" in response.json()["message"]
    assert "retry-after" in response.headers
    assert call("GET", server.inference + "/ping").status == 500
    assert server.predict("echo", b"alive").body == b"alive"


def test_burst_over_the_queue_gets_fast_503s(server: ServerProcess) -> None:
    wait_ready(server, "tiny_queue")
    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(server.predict, "tiny_queue", b"0.3", None, 30) for _ in range(20)]
        live = call("GET", server.inference + "/v2/health/live")
        results = [f.result() for f in futures]
    statuses = sorted(r.status for r in results)
    assert set(statuses) == {200, 503}
    # one in the worker plus three queued fit; the rest are refused at once
    assert 4 <= statuses.count(200) <= 8
    refused = [r for r in results if r.status == 503]
    assert all(r.headers.get("retry-after") for r in refused)
    assert all("queue is full" in r.json()["message"] for r in refused)
    assert live.status == 200


def test_oversized_body_is_413_before_any_worker_sees_it(server: ServerProcess) -> None:
    record = server.workdir / "seen.txt"
    before = record.read_text() if record.exists() else ""
    declared = server.predict("recorder", b"x" * 5000)
    assert declared.status == 413 and "limit" in declared.json()["message"]
    # chunked: no Content-Length, the limit is enforced while reading
    parts = urlsplit(server.inference)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        chunk = b"y" * 800
        request = b"POST /predictions/recorder HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
        sock.sendall(request + body)
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")
    after = record.read_text() if record.exists() else ""
    assert after == before, "no oversized request may reach the handler"
    assert server.predict("recorder", b"small").status == 200


def test_client_gone_while_queued_never_reaches_the_worker(server: ServerProcess) -> None:
    wait_ready(server, "gate")
    pid = worker_pid(server, "gate")
    gone_before = metric(server, "modelserve_requests_total", "gate", ',status="499"')
    with ThreadPoolExecutor(1) as pool:
        holder = pool.submit(server.predict, "gate", b"hold:queued-holder", {"x-request-id": "queued-holder"})
        wait_for(lambda: ["queued-holder"] in gate_batches(server), 10, "the holder is in the handler")
        with send_raw(server, "gate", "quitter"):
            wait_for(lambda: pending(server, "gate") == 1, 10, "the quitter is queued behind the holder")
        # hung up while queued: the server counts the request as closed by the client (499) before the worker frees
        wait_for(lambda: metric(server, "modelserve_requests_total", "gate", ',status="499"') == gone_before + 1,
                 10, "the server saw the client go")  # fmt: skip
        release(server, "queued-holder")
        assert holder.result().status == 200
    after = server.predict("gate", b"b", {"x-request-id": "queued-after"})
    assert after.status == 200 and after.json()["batch_size"] == 1
    assert after.json()["pid"] == pid, "the same worker serves on"
    assert pending(server, "gate") == 0
    seen = [request_id for batch in gate_batches(server) for request_id in batch]
    assert "queued-after" in seen and "quitter" not in seen


def test_client_gone_mid_inference_does_not_break_its_batch(server: ServerProcess) -> None:
    wait_ready(server, "gate")
    pid = worker_pid(server, "gate")
    gone_before = metric(server, "modelserve_requests_total", "gate", ',status="499"')
    stayers = [f"stayer{i}" for i in range(3)]
    with ThreadPoolExecutor(4) as pool:
        # the worker is busy with a first request while the batch of four forms behind it
        first = pool.submit(server.predict, "gate", b"hold:mid-first", {"x-request-id": "mid-first"})
        wait_for(lambda: ["mid-first"] in gate_batches(server), 10, "the first request is in the handler")
        futures = [pool.submit(server.predict, "gate", b"hold:mid-batch", {"x-request-id": rid}) for rid in stayers]
        with send_raw(server, "gate", "leaver"):
            wait_for(lambda: metric(server, "modelserve_requests_in_flight", "gate") == 5, 10, "the batch is formed")
            release(server, "mid-first")
            wait_for(lambda: sorted([*stayers, "leaver"]) in [sorted(b) for b in gate_batches(server)], 10,
                     "the leaver is in the batch the handler is computing")  # fmt: skip
        wait_for(lambda: metric(server, "modelserve_requests_total", "gate", ',status="499"') == gone_before + 1,
                 10, "the server saw the client go mid-inference")  # fmt: skip
        release(server, "mid-batch")
        assert first.result().status == 200
        results = [f.result() for f in futures]
    assert [r.status for r in results] == [200, 200, 200], [r.text for r in results]
    assert [r.json()["request_id"] for r in results] == stayers
    assert all(r.json()["batch_size"] == 4 for r in results)
    assert worker_pid(server, "gate") == pid, "the worker survives a client leaving its batch"
    assert server.predict("gate", b"y").status == 200


def test_workers_killed_under_concurrent_load_lose_no_request_and_mix_no_answers(tmp_path: Path, store: Path) -> None:
    config = "minWorkers: 2\nmaxWorkers: 2\nbatchSize: 4\nmaxBatchDelay: 10\nhandler:\n  pause_s: 0.1\n"
    make_archive(store, "busy", "batch_handler.py", config_yaml=config)
    with running_server(tmp_path, store, ["busy.mar"], extra_args=["--ncs"]) as server:
        outcomes: list[tuple[str, Response | BaseException]] = []
        lock = threading.Lock()
        stop_killing = threading.Event()

        def client(index: int) -> None:
            for round_ in range(20):
                request_id = f"client{index}-{round_}"
                try:
                    result: Response | BaseException = server.predict("busy", b"x", {"x-request-id": request_id})
                except OSError as exc:
                    result = exc
                with lock:
                    outcomes.append((request_id, result))

        killed: dict[int, str] = {}  # pid -> the status describe gave it just before the kill

        def killer() -> None:
            for _ in range(5):
                if stop_killing.wait(0.5):
                    return
                listed = describe(server, "busy")["workers"]
                assert isinstance(listed, list)
                workers = [w for w in listed if w["status"] != "STOPPED" and w.get("pid") and w["pid"] not in killed]
                if workers:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(workers[0]["pid"]), signal.SIGKILL)
                        killed[int(workers[0]["pid"])] = str(workers[0]["status"])

        chaos = threading.Thread(target=killer)
        chaos.start()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(client, range(16)))
        stop_killing.set()
        chaos.join(30)

        assert len(outcomes) == 16 * 20, "every request came back"
        failures = [(rid, r) for rid, r in outcomes if not isinstance(r, Response)]
        assert not failures, f"requests without an HTTP answer: {failures[:3]}"
        statuses = {r.status for _, r in outcomes if isinstance(r, Response)}
        assert statuses <= {200, 500}, statuses
        for request_id, response in outcomes:
            assert isinstance(response, Response)
            if response.status == 200:
                assert response.json()["request_id"] == request_id, "each client got its own answer"
            else:
                assert "died" in response.json()["message"]
        assert any(r.status == 200 for _, r in outcomes if isinstance(r, Response))

        def settled() -> bool:
            text = call("GET", server.metrics + "/metrics").text
            return all(
                f'{name}{{model_name="busy",model_version="1.0"}} {value}' in text
                for name, value in (("modelserve_requests_in_flight", "0.0"), ("modelserve_queue_depth", "0.0"),
                                    ("modelserve_workers_live", "2.0"))
            )  # fmt: skip

        wait_for(settled, 30, "nothing left in flight or queued, two workers live again")
        assert server.predict("busy", b"after").status == 200
        assert len(killed) >= 2, "the killer hit workers while the load ran"
        assert not set(killed) & {int(w["pid"]) for w in describe(server, "busy")["workers"]}, "all were replaced"  # type: ignore[attr-defined]
        # a death after READY is a restart; a worker killed while starting is a failed start: every kill is one of the
        # two, and nothing else made either happen
        restarts = metric(server, "modelserve_worker_restarts_total", "busy")
        load_failures = metric(server, "modelserve_worker_load_failures_total", "busy")
        assert restarts + load_failures == len(killed), (restarts, load_failures, killed)
        seen_serving = sum(status in ("READY", "BUSY") for status in killed.values())
        assert restarts >= seen_serving, (restarts, killed)
