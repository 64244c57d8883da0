"""A real multi-node Ray cluster on this machine, on loopback, for the Ray backend's tests.

``ray.cluster_utils.Cluster`` starts a head and more nodes as processes of this machine (each its own raylet and
object store). Each node carries a custom resource named after it, so a test can pin workers to a node. The test
process starts and stops the nodes but never connects to the cluster: the server under test is its only driver.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from modelserve.workers.ray_env import loopback_environment, set_defaults

NODE_OBJECT_STORE = 100 << 20


class RayNodes:
    """Head plus named nodes; ``address`` is what the server's ``ray_address`` takes."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        self.nodes: dict[str, Any] = {}
        self.cluster: Any = None

    def _args(self, name: str, cpus: int) -> dict[str, Any]:
        return {
            "num_cpus": cpus,
            "resources": {name: 1},
            "object_store_memory": NODE_OBJECT_STORE,
            "include_dashboard": False,
            "node_ip_address": "127.0.0.1",
        }

    def start(self, names: list[str], cpus: int = 1) -> RayNodes:
        set_defaults()
        saved = os.environ.get("HOME")
        os.environ.update(loopback_environment(self.work_dir))  # HOME holds the "no cloud" bootstrap file
        try:
            from ray.cluster_utils import Cluster

            self.cluster = Cluster(initialize_head=True, head_node_args=self._args(names[0], cpus))
            self.nodes[names[0]] = self.cluster.head_node
            for name in names[1:]:
                self.add(name, cpus)
        finally:
            if saved is not None:
                os.environ["HOME"] = saved
        return self

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add(self, name: str, cpus: int = 1) -> str:
        """Start a node carrying resource ``name``; return its node id."""
        node = self.cluster.add_node(wait=True, **self._args(name, cpus))
        self.nodes[name] = node
        return str(node.node_id)

    def remove(self, name: str) -> None:
        node = self.nodes.pop(name)
        self.cluster.remove_node(node, allow_graceful=False)

    def node_id(self, name: str) -> str:
        return str(self.nodes[name].node_id)

    def pids(self) -> set[int]:
        """The cluster's own processes (raylets, GCS, agents) and everything they started."""
        found: set[int] = set()
        for node in [self.cluster.head_node, *self.cluster.worker_nodes] if self.cluster else []:
            for infos in node.all_processes.values():
                for info in infos:
                    pid = info.process.pid
                    found.add(pid)
                    with contextlib.suppress(psutil.Error):
                        found.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        return found

    def shutdown(self) -> None:
        if self.cluster is None:
            return
        started = self.pids()
        self.cluster.shutdown()
        self.cluster = None
        for pid in started:  # only what this cluster started
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


@contextlib.contextmanager
def ray_nodes(work_dir: Path, names: list[str], cpus: int = 1) -> Iterator[RayNodes]:
    nodes = RayNodes(work_dir)
    try:
        yield nodes.start(names, cpus)
    finally:
        nodes.shutdown()


@contextlib.contextmanager
def backend_config(backend: str, work_dir: Path, cpus: int = 4) -> Iterator[str]:
    """config.properties lines that select ``backend`` for a server; ``ray`` starts a two-node cluster for it.

    Suites that must behave the same on every backend parametrize their server fixture with this.
    """
    if backend == "local":
        yield ""
        return
    with ray_nodes(work_dir / "ray", ["head", "node_a"], cpus=cpus) as nodes:
        yield f"worker_backend=ray\nray_address={nodes.address}\n"
