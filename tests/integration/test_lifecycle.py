"""Drain on SIGTERM, no orphans, temp directories removed, and snapshot restore across restarts."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import psutil

from tests.support.server import Response, ServerProcess, call, make_archive, running_server, wait_for


def test_sigterm_drains_in_flight_requests_and_leaves_nothing_behind(tmp_path: Path, store: Path) -> None:
    make_archive(store, "sleepy", "sleep_handler.py", config_yaml="minWorkers: 2\n")
    temp = tmp_path / "tmp"
    temp.mkdir()
    server = ServerProcess(tmp_path, store, ["sleepy.mar"], extra_args=["--ncs"], env={"TMPDIR": str(temp)})
    server.start()
    assert server.process is not None
    workers = server.worker_pids()
    assert len(workers) == 2
    assert list(temp.iterdir()), "the server keeps its extracted archives in the temp directory"
    results: list[Response] = []
    thread = threading.Thread(target=lambda: results.append(server.predict("sleepy", b"1.5")))
    thread.start()
    wait_for(lambda: "BUSY" in server.manage("GET", "/models/sleepy").text, 10, "request in flight")
    server.process.send_signal(signal.SIGTERM)
    wait_for(lambda: call("GET", server.inference + "/ping").status == 503, 5, "readiness turns false")
    refused = server.predict("sleepy", b"0")
    assert refused.status == 503 and "shutting down" in refused.json()["message"]
    assert call("GET", server.inference + "/v2/health/ready").status == 503
    thread.join(30)
    assert results[0].status == 200, "the in-flight request completes"
    assert server.process.wait(30) == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in workers)
    assert list(temp.iterdir()) == [], "temporary directories are removed"
    server.stop()


def test_snapshot_restores_models_versions_defaults_and_workers(tmp_path: Path, store: Path) -> None:
    make_archive(store, "echo", "echo_handler.py", config_yaml="minWorkers: 1\n")
    make_archive(store, "multi", "batch_handler.py", config_yaml="minWorkers: 1\n")
    make_archive(store, "multi", "batch_handler.py", version="2.0", config_yaml="minWorkers: 1\n")
    with running_server(tmp_path, store, ["echo.mar"], extra_args=["--enable-model-api"]) as server:
        for url in ("multi.mar", "multi-2.0.mar"):
            assert server.manage("POST", f"/models?url={url}&synchronous=true").status == 200
        assert server.manage("PUT", "/models/multi/2.0/set-default").status == 200
        assert server.manage("PUT", "/models/echo?min_worker=2&max_worker=3&synchronous=true").status == 200
        before = {m["modelName"] for m in server.manage("GET", "/models").json()["models"]}
    assert (tmp_path / "logs" / "config" / "snapshot.json").is_file()
    with running_server(tmp_path, store, []) as server:
        models = {m["modelName"] for m in server.manage("GET", "/models").json()["models"]}
        assert models == before == {"echo", "multi"}
        assert server.manage("GET", "/models/multi").json()[0]["modelVersion"] == "2.0"
        assert sorted(v["modelVersion"] for v in server.manage("GET", "/models/multi/all").json()) == ["1.0", "2.0"]
        echo = server.manage("GET", "/models/echo").json()[0]
        assert echo["minWorkers"] == 2 and echo["maxWorkers"] == 3 and len(echo["workers"]) == 2
        assert server.predict("multi", b"x").status == 200


def test_ncs_neither_writes_nor_restores(tmp_path: Path, store: Path) -> None:
    make_archive(store, "echo", "echo_handler.py", config_yaml="minWorkers: 1\n")
    snapshot = tmp_path / "logs" / "config" / "snapshot.json"
    with running_server(tmp_path, store, ["echo.mar"], extra_args=["--ncs"]) as server:
        assert server.predict("echo", b"x").status == 200
    assert not snapshot.exists(), "--ncs writes no snapshot"
    with running_server(tmp_path, store, ["echo.mar"]):
        pass
    written = snapshot.read_bytes()
    assert b"echo" in written, "without --ncs the snapshot records echo: a server started from it would load echo"
    with running_server(tmp_path, store, [], extra_args=["--ncs"]) as server:
        assert server.manage("GET", "/models").json()["models"] == [], "--ncs restores nothing"
    assert snapshot.read_bytes() == written, "--ncs leaves the snapshot as it was"
    with running_server(tmp_path, store, []) as server:
        models = server.manage("GET", "/models").json()["models"]
        assert [m["modelName"] for m in models] == ["echo"], "the same start without --ncs restores the snapshot"


def test_startup_reports_bound_addresses_quickly(tmp_path: Path, store: Path) -> None:
    make_archive(store, "echo", "echo_handler.py", config_yaml="minWorkers: 1\n")
    started = time.monotonic()
    with running_server(tmp_path, store, ["all"], extra_args=["--ncs"]) as server:
        assert time.monotonic() - started < 30
        assert server.inference.startswith("http://127.0.0.1:")
        assert server.management.startswith("http://127.0.0.1:")
        assert server.metrics.startswith("http://127.0.0.1:")
        assert "Model echo version 1.0: READY" in server.log_text()
