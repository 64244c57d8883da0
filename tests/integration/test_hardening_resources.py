"""Resource hygiene against a real server: no YAML bomb, no fd or thread leak, no files left by failures or kills."""

from __future__ import annotations

import json
import signal
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.support.server import ServerProcess, call, make_archive, running_server, wait_for

MODEL_API = ["--enable-model-api", "--ncs", "--disable-token-auth"]
BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


def _work_dirs_holding(model_name: str) -> set[Path]:
    """The servers' work directories (in the temporary directory) that hold an extracted archive of ``model_name``."""
    found = set()
    for manifest in Path(tempfile.gettempdir()).glob("modelserve-work-*/modelserve-*/**/MAR-INF/MANIFEST.json"):
        try:
            if json.loads(manifest.read_text())["model"]["modelName"] == model_name:
                found.add(next(p for p in manifest.parents if p.name.startswith("modelserve-work-")))
        except (OSError, ValueError, KeyError, StopIteration):
            continue
    return found


def _staging_dirs(work_dir: Path) -> list[str]:
    return sorted(entry.name for entry in work_dir.iterdir() if entry.name.startswith("modelserve-"))


@dataclass
class Served:
    server: ServerProcess
    anchor: str  # a model of this server only: finds its work directory among those of other servers

    @property
    def management(self) -> str:
        return self.server.management


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("hygiene")
    store = root / "model_store"
    store.mkdir()
    weights = root / "weights.pt"  # any .pt makes it a torch model: its workers fork from the worker template
    weights.write_bytes(b"not really weights")
    make_archive(store, "echo", "echo_handler.py", config_yaml="minWorkers: 1\n")
    make_archive(store, "torchy", "function_handler.py:handle", config_yaml="minWorkers: 1\n", serialized_file=weights)
    make_archive(store, "bomb", "echo_handler.py", config_yaml=BILLION_LAUGHS)
    make_archive(store, "overflow", "echo_handler.py", config_yaml="maxBatchDelay: 1e309\n")
    make_archive(store, "broken", "fail_init_handler.py", config_yaml="minWorkers: 1\n")
    anchor = f"anchor{uuid.uuid4().hex[:8]}"  # a name no other server on the machine has: finds this work dir
    make_archive(store, anchor, "echo_handler.py", config_yaml="minWorkers: 0\n")
    config = "max_workers_total=6\nmax_model_load_failures=1\n"
    with running_server(root, store, [f"{anchor}.mar"], extra_args=MODEL_API, config=config) as running:
        yield Served(running, anchor)


def _work_dir(served: Served) -> Path:
    (work_dir,) = _work_dirs_holding(served.anchor)
    return work_dir


def test_yaml_with_aliases_is_refused_at_registration_and_the_server_stays_responsive(served: Served) -> None:
    server = served.server
    assert server.process is not None
    rss_before = psutil.Process(server.process.pid).memory_info().rss
    started = time.monotonic()
    response = call("POST", server.management + "/models?url=bomb.mar", timeout=20)
    assert response.status == 400, response.text
    assert "anchors and aliases" in response.json()["message"]
    assert time.monotonic() - started < 10
    assert call("GET", server.inference + "/ping", timeout=5).status == 200
    assert psutil.Process(server.process.pid).memory_info().rss - rss_before < 50 << 20


@pytest.mark.parametrize(
    ("query", "status", "says"),
    [("url=overflow.mar", 400, "maxBatchDelay: expected a finite number"),
     ("url=echo.mar&max_batch_delay=1e309", 400, "max_batch_delay"),
     ("url=echo.mar&handler=../../x.py", 400, "invalid handler"),
     ("url=echo.mar&initial_workers=7", 400, "max_workers_total=6"),
     ("url=broken.mar&initial_workers=1", 500, "Failed to start workers")],
)  # fmt: skip
def test_a_registration_that_fails_after_extraction_leaves_nothing_on_disk(
    served: Served, query: str, status: int, says: str
) -> None:
    server = served.server
    work_dir = _work_dir(served)
    before = _staging_dirs(work_dir)
    response = call("POST", f"{server.management}/models?{query}", timeout=60)
    assert response.status == status, response.text
    assert says in response.json()["message"]
    wait_for(lambda: _staging_dirs(work_dir) == before, 10, f"what {query} extracted is still in {work_dir}")
    assert call("GET", server.management + "/models").json()["models"] == [
        {"modelName": served.anchor, "modelUrl": f"{served.anchor}.mar"}
    ]


def _fds_and_threads(pid: int) -> tuple[int, int]:
    process = psutil.Process(pid)
    return process.num_fds(), process.num_threads()


@pytest.mark.slow
def test_fds_and_threads_stay_bounded_over_register_unregister_cycles(served: Served) -> None:
    server = served.server
    assert server.process is not None
    pid = server.process.pid
    for archive in ("echo", "torchy"):  # the first torch model starts the worker template, which stays: not a leak
        assert call("POST", f"{server.management}/models?url={archive}.mar", timeout=60).status == 200
        assert call("DELETE", f"{server.management}/models/{archive}").status == 200
    fds_before, threads_before = _fds_and_threads(pid)
    # asynchronous: unregistered while its worker is still starting (forked from the template), 100 times
    for _ in range(100):
        assert call("POST", server.management + "/models?url=torchy.mar&synchronous=false").status == 202
        assert call("DELETE", server.management + "/models/torchy").status == 200
    # synchronous: registered with a running worker, then unregistered
    for archive in ("echo", "torchy") * 10:
        response = call("POST", f"{server.management}/models?url={archive}.mar&synchronous=true", timeout=60)
        assert response.status == 200, response.text
        assert call("DELETE", f"{server.management}/models/{archive}").status == 200

    def settled() -> bool:
        fds, threads = _fds_and_threads(pid)
        return fds <= fds_before + 2 and threads <= threads_before + 2

    wait_for(settled, 15, f"fds/threads did not come back: {_fds_and_threads(pid)} vs {(fds_before, threads_before)}")
    wait_for(lambda: len(server.worker_pids()) <= 1, 15, "workers of unregistered versions still run")  # the template


def test_work_dirs_of_a_killed_server_are_removed_at_the_next_start_and_a_live_ones_kept(tmp_path: Path) -> None:
    store = tmp_path / "model_store"
    store.mkdir()
    names = [f"killed{uuid.uuid4().hex[:8]}", f"alive{uuid.uuid4().hex[:8]}"]
    for name in names:
        make_archive(store, name, "echo_handler.py", config_yaml="minWorkers: 0\n")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    killed = ServerProcess(tmp_path / "a", store, [f"{names[0]}.mar"], extra_args=MODEL_API).start()
    try:
        with running_server(tmp_path / "b", store, [f"{names[1]}.mar"], extra_args=MODEL_API):
            (killed_dir,) = _work_dirs_holding(names[0])
            (alive_dir,) = _work_dirs_holding(names[1])
            assert killed.process is not None
            children = psutil.Process(killed.process.pid).children(recursive=True)
            killed.process.send_signal(signal.SIGKILL)
            killed.process.wait(10)
            for child in children:
                _kill_quietly(child)
            assert killed_dir.is_dir()  # nothing cleaned up after a kill -9
            with running_server(tmp_path / "c", store, [], extra_args=MODEL_API):
                assert not killed_dir.exists(), "the dead server's work directory was not removed"
                assert alive_dir.is_dir() and _staging_dirs(alive_dir), "a live server's work directory was touched"
    finally:
        killed.stop()  # already gone (or stopped here, should the test have failed before the kill)


def _kill_quietly(process: psutil.Process) -> None:
    try:
        process.kill()
    except psutil.NoSuchProcess:
        return


def test_a_worker_over_its_memory_limit_is_recycled_after_its_batch_without_losing_requests(tmp_path: Path) -> None:
    store = tmp_path / "model_store"
    store.mkdir()
    make_archive(store, "leaky", "memory_handler.py",
                 config_yaml='minWorkers: 1\nmaxWorkers: 1\nworkerMemoryLimit: "150MB"\n')  # fmt: skip
    with running_server(tmp_path, store, ["leaky.mar"], extra_args=MODEL_API) as server:
        first_pid = call("GET", server.management + "/models/leaky").json()[0]["workers"][0]["pid"]
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda _: server.predict("leaky", b"{}", timeout=60).status, range(12)))
        assert statuses == [200] * 12, statuses
        metrics = call("GET", server.metrics + "/metrics").text
        line = next(x for x in metrics.splitlines() if x.startswith("modelserve_worker_recycles_total{"))
        assert 'reason="memory"' in line and float(line.rsplit(" ", 1)[1]) >= 1, line
        assert 'modelserve_worker_restarts_total{model_name="leaky",model_version="1.0"} 0.0' in metrics

        def replaced() -> bool:
            workers = call("GET", server.management + "/models/leaky").json()[0]["workers"]
            return bool(workers) and workers[0]["pid"] != first_pid and workers[0]["status"] == "READY"

        wait_for(replaced, 30, "the leaking worker was not replaced")
        assert first_pid not in server.worker_pids()
        assert server.predict("leaky", b"{}").status == 200
        assert "workerMemoryLimit" in server.log_text()
