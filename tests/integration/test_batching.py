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


def gated_archive(tmp_path: Path, store: Path, name: str, workers: int) -> tuple[Path, Path]:
    """An archive of the gate handler (batches of up to 8 within 1.5 s): the file it records batches in, and the
    directory whose files release held batches."""
    record, release = tmp_path / "batches.txt", tmp_path / "release"
    release.mkdir()
    make_archive(store, name, "gate_handler.py",
                 config_yaml=f"minWorkers: {workers}\nbatchSize: 8\nmaxBatchDelay: 1500\nhandler:\n"
                 f"  record_to: {record}\n  release_dir: {release}\n")  # fmt: skip
    return record, release


def test_partial_batch_waits_at_most_max_batch_delay_while_its_worker_is_busy(tmp_path: Path, store: Path) -> None:
    record, release = gated_archive(tmp_path, store, "patient", workers=1)

    def pending() -> int:
        return int(server.manage("GET", "/models/patient").json()[0]["jobQueueStatus"]["pendingRequests"])

    with running_server(tmp_path, store, ["patient.mar"], extra_args=["--ncs"]) as server:
        with ThreadPoolExecutor(4) as pool:
            first = pool.submit(server.predict, "patient", b"hold:go")
            wait_for(lambda: record.exists() and len(record.read_text().splitlines()) == 1, 10, "the first is held")
            started = time.monotonic()
            company = [pool.submit(server.predict, "patient", b"b"), pool.submit(server.predict, "patient", b"c")]
            # the worker is busy: the partial batch waits for company, then goes (armed behind the first) once its
            # delay has run out, although the worker is still busy
            wait_for(lambda: pending() == 2, 10, "both wait in the queue")
            wait_for(lambda: pending() == 0, 10, "the partial batch went when its delay ran out")
            waited = time.monotonic() - started
            late = pool.submit(server.predict, "patient", b"d")
            wait_for(lambda: pending() == 1, 10, "a later request waits: the worker holds two batches")
            (release / "go").touch()
            answers = [first.result().json()] + [c.result().json() for c in company] + [late.result().json()]
        assert [a["batch_size"] for a in answers] == [1, 2, 2, 1]
        assert [len(line.split()) for line in record.read_text().splitlines()] == [1, 2, 1]
        assert waited >= 1.5 - 0.1, "the partial batch waited its delay for company"


def test_a_partial_batch_waits_for_company_while_another_worker_computes(tmp_path: Path, store: Path) -> None:
    record, release = gated_archive(tmp_path, store, "pair", workers=2)
    with running_server(tmp_path, store, ["pair.mar"], extra_args=["--ncs"]) as server:
        wait_for(lambda: len(server.manage("GET", "/models/pair").json()[0]["workers"]) == 2, 30, "two workers")
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(server.predict, "pair", b"hold:go")
            wait_for(lambda: record.exists() and len(record.read_text().splitlines()) == 1, 10, "the first is held")
            started = time.monotonic()
            second = pool.submit(server.predict, "pair", b"x")
            # the other worker is idle, but a batch of the version computes: the second waits its delay for company
            answer = second.result()
            waited = time.monotonic() - started
            (release / "go").touch()
            answers = [first.result().json(), answer.json()]
        assert [a["batch_size"] for a in answers] == [1, 1]
        assert answers[0]["pid"] != answers[1]["pid"], "then it went to the idle worker, not behind the held batch"
        assert waited >= 1.5 - 0.1, "it waited maxBatchDelay for company"


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
