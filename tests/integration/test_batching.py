"""Dynamic batching: batch sizes under concurrent load, and the max_batch_delay bound."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.support.server import make_archive, running_server, wait_for


def test_batches_fill_up_to_batch_size_under_concurrent_load(tmp_path: Path, store: Path) -> None:
    make_archive(store, "batchy", "batch_handler.py",
                 config_yaml="minWorkers: 1\nbatchSize: 4\nmaxBatchDelay: 100\nhandler:\n  pause_s: 0.2\n")  # fmt: skip
    with running_server(tmp_path, store, ["batchy.mar"], extra_args=["--ncs"]) as server:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda _: server.predict("batchy", b"x"), range(16)))
        assert all(r.status == 200 for r in results)
        sizes = [r.json()["batch_size"] for r in results]
        assert max(sizes) == 4, sizes
        assert all(1 <= s <= 4 for s in sizes)
        # requests that queued while the worker was busy went out together: few batches for 16 requests
        batches = sum(1 / s for s in sizes)
        assert batches <= 8, sizes
        # every request got its own answer
        assert len({r.json()["request_id"] for r in results}) == 16


def test_partial_batch_waits_at_most_max_batch_delay_while_busy(tmp_path: Path, store: Path) -> None:
    make_archive(store, "patient", "batch_handler.py",
                 config_yaml="minWorkers: 2\nbatchSize: 8\nmaxBatchDelay: 600\nhandler:\n  pause_s: 1.5\n")  # fmt: skip
    with running_server(tmp_path, store, ["patient.mar"], extra_args=["--ncs"]) as server:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(server.predict, "patient", b"a")
            # the first batch is being computed: the second worker waits for company
            wait_for(lambda: "BUSY" in server.manage("GET", "/models/patient").text, 10, "the first batch is computing")
            started = time.monotonic()
            second = pool.submit(server.predict, "patient", b"b")
            response = second.result()
            elapsed = time.monotonic() - started
            assert first.result().json()["batch_size"] == 1
        assert response.json()["batch_size"] == 1
        assert elapsed >= 1.5 + 0.6 - 0.1, "a partial batch waits for company up to max_batch_delay while busy"
        assert elapsed < 1.5 + 0.6 + 2.0, "and then goes without it"


def test_lone_request_on_an_idle_version_goes_at_once(tmp_path: Path, store: Path) -> None:
    make_archive(store, "eager", "batch_handler.py", config_yaml="minWorkers: 1\nbatchSize: 8\nmaxBatchDelay: 2000\n")
    with running_server(tmp_path, store, ["eager.mar"], extra_args=["--ncs"]) as server:
        server.predict("eager", b"warm-up")
        started = time.monotonic()
        response = server.predict("eager", b"x")
        assert response.json()["batch_size"] == 1
        assert time.monotonic() - started < 1.0, "nothing in flight: no reason to wait 2 s for company"


def test_batch_size_one_sends_each_request_alone(tmp_path: Path, store: Path) -> None:
    make_archive(store, "single", "batch_handler.py", config_yaml="minWorkers: 2\nbatchSize: 1\n")
    with running_server(tmp_path, store, ["single.mar"], extra_args=["--ncs"]) as server:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: server.predict("single", b"x"), range(8)))
        assert [r.json()["batch_size"] for r in results] == [1] * 8
