"""A Ray cluster of this machine (head and two nodes) and a driver in another process stay on loopback.

The cluster runs in one process and the driver (joining the way the server does, ``ray_env.connect_ray``) in another,
each under ``strace -f`` where ptrace is allowed, so the trace covers every Ray process from its first system call:
a connect to the cloud metadata address or a DNS query would show there even when the socket is gone by the time
the sockets are listed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

from tests.support.paths import REPO
from tests.support.ray_loopback import (
    Endpoint,
    OffLoopbackCall,
    non_loopback_sockets,
    off_loopback_calls,
    process_tree,
    stop_processes,
    strace_usable,
    traced,
)
from tests.support.server import wait_for

pytest.importorskip("ray")

pytestmark = [pytest.mark.ray]

NODES = ["head", "node_a", "node_b"]
START_TIMEOUT_S = 90.0


@dataclass
class Run:
    node_ids: dict[str, str]
    placed: dict[str, Any]
    driver_node: str
    sockets: list[Endpoint]
    calls: list[OffLoopbackCall] | None  # None: not traced here
    leftovers_seen_by_cluster: list[str]
    leftovers_seen_by_test: list[str]
    processes: int


def _program(args: list[str], trace: Path | None, log: IO[bytes]) -> subprocess.Popen[bytes]:
    command = traced([sys.executable, "-m", "tests.support.ray_loopback", *args], trace)
    return subprocess.Popen(command, cwd=REPO, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)


def _wait_file(path: Path, process: subprocess.Popen[bytes], log: Path, what: str) -> dict[str, Any]:
    wait_for(lambda: path.exists() or process.poll() is not None, START_TIMEOUT_S, what)
    if not path.exists():
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise AssertionError(f"{what}: exited with {process.returncode}\n{tail}")
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def _finish(process: subprocess.Popen[bytes]) -> None:
    """Close the program's stdin (its signal to stop) and wait for it."""
    if process.stdin is not None and not process.stdin.closed:
        process.stdin.close()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    work = tmp_path_factory.mktemp("ray_loopback")
    trace = strace_usable()
    status, ready = work / "cluster.json", work / "driver.json"
    cluster_log, driver_log = work / "cluster.log", work / "driver.log"
    seen: dict[int, psutil.Process] = {}
    with cluster_log.open("wb") as clog, driver_log.open("wb") as dlog:
        cluster = _program(
            ["cluster", str(work / "cluster"), str(status), *NODES], work / "cluster.trace" if trace else None, clog
        )
        driver: subprocess.Popen[bytes] | None = None
        try:
            started = _wait_file(status, cluster, cluster_log, "the cluster comes up")
            driver = _program(
                ["drive", started["address"], str(work / "driver"), str(ready), *NODES],
                work / "driver.trace" if trace else None,
                dlog,
            )
            placed = _wait_file(ready, driver, driver_log, "the driver runs its tasks and actors")
            # everything of both programs, while the actors and their workers are alive
            seen = process_tree([cluster.pid, driver.pid])
            sockets = non_loopback_sockets(seen.values())
        finally:
            if driver is not None:
                _finish(driver)
            _finish(cluster)
            seen.update(process_tree([cluster.pid]))  # anything still there after a failed start
            leftovers = stop_processes(seen.values(), timeout=10)
    done_path = status.with_name(status.name + ".done")
    done: dict[str, Any] = json.loads(done_path.read_text(encoding="utf-8"))
    calls = None
    if trace:
        calls = off_loopback_calls(work / "cluster.trace") + off_loopback_calls(work / "driver.trace")
    yield Run(
        node_ids=started["node_ids"],
        placed=placed["placed"],
        driver_node=placed["driver_node"],
        sockets=sockets,
        calls=calls,
        leftovers_seen_by_cluster=done["leftovers"],
        leftovers_seen_by_test=leftovers,
        processes=len(seen),
    )


def test_each_node_runs_a_task_and_an_actor_for_a_driver_in_another_process(run: Run) -> None:
    for name in NODES:
        assert run.placed[name]["task"][0] == run.node_ids[name], name
        assert run.placed[name]["actor"][0] == run.node_ids[name], name
    assert run.driver_node in run.node_ids.values()


def test_no_socket_of_the_cluster_or_the_driver_is_off_loopback(run: Run) -> None:
    assert run.processes > len(NODES) * 3  # raylets, agents, workers, GCS, ...: the listing saw them
    assert run.sockets == []


def test_no_process_connected_sent_to_or_bound_an_address_off_loopback(run: Run) -> None:
    if run.calls is None:
        pytest.skip("strace is not installed or ptrace is not allowed here")
    assert run.calls == []


def test_shutdown_leaves_none_of_the_cluster_processes(run: Run) -> None:
    assert run.leftovers_seen_by_cluster == []
    assert run.leftovers_seen_by_test == []
