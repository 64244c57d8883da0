"""The Ray backend on a real three-node Ray cluster of this machine (loopback), driven through a real server."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.server import ServerProcess, call, make_archive, running_server, wait_for

pytest.importorskip("ray")

from tests.support.ray_nodes import RayNodes, ray_nodes

pytestmark = [pytest.mark.ray, pytest.mark.slow]

NODES = ["head", "node_a", "node_b"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayNodes]:
    with ray_nodes(tmp_path_factory.mktemp("ray"), NODES) as nodes:
        yield nodes


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("store")
    make_archive(store, "echo", "echo_handler.py")
    make_archive(store, "sleepy", "sleep_handler.py", config_yaml="responseTimeout: 3\nbatchSize: 1\n")
    make_archive(store, "pinned", "echo_handler.py", config_yaml="num_cpus: 0.5\nrayResources:\n  node_b: 0.5\n")
    return store


def is_loopback(ip: str) -> bool:
    """127.0.0.0/8 or ::1, also written as an IPv4-mapped IPv6 address (::ffff:127.0.0.1)."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def off_loopback(pids: set[int]) -> list[str]:
    """Every inet socket of these processes whose local or remote address is not loopback (0.0.0.0 counts)."""
    found = []
    for pid in pids:
        try:
            process = psutil.Process(pid)
            # net_connections since psutil 6 (connections is deprecated there), connections before
            connections = getattr(process, "net_connections", process.connections)(kind="inet")
        except psutil.Error:
            continue
        for conn in connections:
            for address in (conn.laddr, conn.raddr):
                if address and not is_loopback(address.ip):
                    found.append(f"pid {pid}: {conn.laddr} -> {conn.raddr} ({conn.status})")
    return found


def server_tree(server: ServerProcess) -> set[int]:
    assert server.process is not None
    root = psutil.Process(server.process.pid)
    return {root.pid, *(child.pid for child in root.children(recursive=True))}


def ray_config(cluster: RayNodes, extra: str = "default_workers_per_model=1\n") -> str:
    return f"worker_backend=ray\nray_address={cluster.address}\n{extra}"


def workers(server: ServerProcess, model: str) -> list[dict[str, Any]]:
    response = server.manage("GET", f"/models/{model}")
    assert response.status == 200, response.text
    found: list[dict[str, Any]] = response.json()[0]["workers"]
    return found


def ready_nodes(server: ServerProcess, model: str) -> list[str]:
    return sorted(w["node"] for w in workers(server, model) if w["status"] in ("READY", "BUSY"))


def test_workers_spread_over_nodes_and_answer_like_local_workers(
    tmp_path: Path, store: Path, cluster: RayNodes
) -> None:
    bodies = [b"hello", json.dumps({"x": [1, 2, 3]}).encode(), bytes(range(256))]
    (tmp_path / "local").mkdir()
    with running_server(tmp_path / "local", store, ["echo=echo.mar"]) as local:
        expected = [
            (r.status, r.headers.get("content-type"), r.body) for r in map(lambda b: local.predict("echo", b), bodies)
        ]
    (tmp_path / "ray").mkdir()
    config = ray_config(cluster, "default_workers_per_model=3\n")
    with running_server(tmp_path / "ray", store, ["echo=echo.mar"], config=config) as server:
        wait_for(lambda: len(ready_nodes(server, "echo")) == 3, 60, "three workers ready")
        nodes = ready_nodes(server, "echo")
        assert len(set(nodes)) == 3, f"workers not spread over the nodes: {nodes}"
        assert set(nodes) == {cluster.node_id(n) for n in NODES}
        assert all(w["nodeAddress"] == "127.0.0.1" for w in workers(server, "echo"))
        got = [
            (r.status, r.headers.get("content-type"), r.body) for r in map(lambda b: server.predict("echo", b), bodies)
        ]
        assert got == expected
        metrics = call("GET", server.metrics + "/metrics").text
        wait_for(lambda: f'node="{cluster.node_id("node_b")}"' in call("GET", server.metrics + "/metrics").text,
                 10, "worker memory labelled with its node")  # fmt: skip
        assert "modelserve_worker_rss_bytes" in metrics
        # the server (the cluster's driver), its actors and every process of the cluster listen and talk on loopback
        actors = {int(w["pid"]) for w in workers(server, "echo")}
        assert off_loopback(server_tree(server) | cluster.pids() | actors) == []


def test_pinned_model_runs_only_on_the_node_with_its_resource(tmp_path: Path, store: Path, cluster: RayNodes) -> None:
    config = ray_config(cluster, "default_workers_per_model=2\n")
    with running_server(tmp_path, store, ["pinned=pinned.mar"], config=config) as server:
        wait_for(lambda: len(ready_nodes(server, "pinned")) == 2, 60, "two pinned workers ready")
        assert ready_nodes(server, "pinned") == [cluster.node_id("node_b")] * 2
        assert server.predict("pinned", b"x").body == b"x"


def test_killed_actor_fails_its_batch_with_500_and_is_replaced(tmp_path: Path, store: Path, cluster: RayNodes) -> None:
    with running_server(tmp_path, store, ["sleepy=sleepy.mar"], config=ray_config(cluster)) as server:
        wait_for(lambda: len(ready_nodes(server, "sleepy")) == 1, 60, "worker ready")
        victim = workers(server, "sleepy")[0]["pid"]
        outcome: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: outcome.update(r=server.predict("sleepy", b"2.5", timeout=60)))
        thread.start()
        wait_for(lambda: workers(server, "sleepy")[0]["status"] == "BUSY", 10, "worker busy")
        os.kill(victim, signal.SIGKILL)
        thread.join(60)
        response = outcome["r"]
        assert response.status == 500, response.text
        assert "died" in response.json()["message"]
        wait_for(lambda: len(ready_nodes(server, "sleepy")) == 1, 60, "replacement ready")
        assert workers(server, "sleepy")[0]["pid"] != victim
        assert server.predict("sleepy", b"0.01").status == 200


def test_response_timeout_gives_504_and_the_actor_is_replaced(tmp_path: Path, store: Path, cluster: RayNodes) -> None:
    with running_server(tmp_path, store, ["sleepy=sleepy.mar"], config=ray_config(cluster)) as server:
        wait_for(lambda: len(ready_nodes(server, "sleepy")) == 1, 60, "worker ready")
        victim = workers(server, "sleepy")[0]["pid"]
        response = server.predict("sleepy", b"30", timeout=60)
        assert response.status == 504, response.text
        wait_for(lambda: not psutil.pid_exists(victim), 30, "timed-out actor killed")
        wait_for(lambda: len(ready_nodes(server, "sleepy")) == 1, 60, "replacement ready")
        assert server.predict("sleepy", b"0.01").status == 200


def test_node_leaves_and_comes_back(tmp_path: Path, store: Path, cluster: RayNodes) -> None:
    config = ray_config(cluster, "default_workers_per_model=3\n")
    with running_server(tmp_path, store, ["echo=echo.mar"], config=config) as server:
        wait_for(lambda: len(set(ready_nodes(server, "echo"))) == 3, 60, "a worker on each node")
        gone = cluster.node_id("node_a")
        cluster.remove("node_a")
        # the others answer throughout; the lost worker has no node with a free CPU to go to
        wait_for(lambda: gone not in ready_nodes(server, "echo"), 60, "the node's worker is gone from describe")
        for i in range(20):
            response = server.predict("echo", b"%d" % i)
            assert response.status == 200 and response.body == b"%d" % i
        assert len(ready_nodes(server, "echo")) == 2
        description = server.manage("GET", "/models/echo").json()[0]
        assert description["status"] == "READY"
        back = cluster.add("node_a")
        wait_for(lambda: back in ready_nodes(server, "echo"), 90, "the pool grows back onto the new node")
        assert len(ready_nodes(server, "echo")) == 3


def test_unregister_and_stop_end_every_actor(tmp_path: Path, store: Path, cluster: RayNodes) -> None:
    config = ray_config(cluster, "default_workers_per_model=1\nenable_model_api=true\n")
    with running_server(tmp_path, store, ["echo=echo.mar", "pinned=pinned.mar"], config=config) as server:
        wait_for(lambda: len(ready_nodes(server, "echo")) == 1, 60, "echo ready")
        wait_for(lambda: len(ready_nodes(server, "pinned")) == 1, 60, "pinned ready")
        echo_pids = [w["pid"] for w in workers(server, "echo")]
        pinned_pids = [w["pid"] for w in workers(server, "pinned")]
        assert server.manage("DELETE", "/models/echo").status == 200
        wait_for(lambda: not any(psutil.pid_exists(p) for p in echo_pids), 30, "echo's actors ended")
        assert server.predict("pinned", b"y").body == b"y"
    wait_for(lambda: not any(psutil.pid_exists(p) for p in pinned_pids), 30, "actors ended with the server")


def test_owned_local_instance_leaves_no_process(tmp_path: Path, store: Path) -> None:
    config = "worker_backend=ray\nray_num_cpus=1\nray_object_store_memory=80MB\ndefault_workers_per_model=1\n"
    server = ServerProcess(tmp_path, store, ["echo=echo.mar"], config=config)
    try:
        server.start(timeout=120)
        wait_for(lambda: len(ready_nodes(server, "echo")) == 1, 60, "worker ready")
        assert server.predict("echo", b"z").body == b"z"
        assert server.process is not None
        tree = psutil.Process(server.process.pid).children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in tree), "no Ray instance under the server"
        assert off_loopback(server_tree(server)) == [], "the server's own Ray instance stays on loopback"
    finally:
        assert server.stop() == 0  # fails if any process of its tree outlived it
