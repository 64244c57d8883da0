"""A local Ray cluster of two nodes on loopback for ``ray_bench.py``: a head with one CPU and a second node with one.

    python ray_cluster.py STATUS_FILE GCS_PORT TEMP_DIR

Run with the Python of the environment whose packages the cluster's workers need (Ray starts its worker processes
with the interpreter that started the node), in the loopback environment ``ray_bench.py`` passes (modelserve's Ray
variables, ``modelserve.workers.ray_env``, and a loopback usage-report address: without them Ray's head asks cloud
metadata addresses, nodes talk over the machine's other address and a cluster not started by ``ray.init`` sends a
"usage stats disabled" report out). Starts the nodes (``ray.cluster_utils.Cluster``: no dashboard, every node on
127.0.0.1, object stores of 150 MiB), writes ``{"address", "cluster_up"}`` to STATUS_FILE
(``cluster_up`` on ``time.monotonic()``, CLOCK_MONOTONIC: the benchmark reads it on the same clock) and keeps the
cluster until SIGTERM or SIGINT, then shuts it down. ``rayserve_app.py`` imports ``start_cluster`` from here.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
OBJECT_STORE_BYTES = 150 << 20
# what the environment must say before ray is imported (ray_bench.py sets it; HOME holds the bootstrap file)
REQUIRED_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_NODE_IP_ADDRESS": LOOPBACK,
    "RAY_AUTH_MODE": "disabled",
}
BOOTSTRAP_FILE = "ray_bootstrap_config.yaml"


def check_loopback_env() -> None:
    """Refuse to start Ray in an environment that would let it reach beyond loopback."""
    wrong = [f"{k}={v}" for k, v in REQUIRED_ENV.items() if os.environ.get(k) != v]
    report = os.environ.get("RAY_USAGE_STATS_REPORT_URL", "")
    if not report.startswith(f"http://{LOOPBACK}:"):
        wrong.append(f"RAY_USAGE_STATS_REPORT_URL=http://{LOOPBACK}:PORT/")
    if not (Path(os.path.expanduser("~")) / BOOTSTRAP_FILE).is_file():
        wrong.append(f"HOME with {BOOTSTRAP_FILE}")
    if wrong:
        raise SystemExit(f"run by ray_bench.py: the environment lacks {', '.join(wrong)}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def start_cluster(gcs_port: int, temp_dir: str, head_cpus: float = 1, node_cpus: float = 1) -> Any:
    """A head and one more node on loopback; every port the nodes open is a free one (none of Ray's fixed defaults,
    which another cluster on this machine may hold)."""
    check_loopback_env()
    from ray.cluster_utils import Cluster

    common: dict[str, Any] = {
        "node_ip_address": LOOPBACK,
        "object_store_memory": OBJECT_STORE_BYTES,
        "temp_dir": temp_dir,
        "include_dashboard": False,
    }
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **common,
            "num_cpus": head_cpus,
            "gcs_server_port": gcs_port,
            "dashboard_agent_listen_port": free_port(),
            "metrics_export_port": free_port(),
        },
    )
    cluster.add_node(**common, num_cpus=node_cpus, metrics_export_port=free_port())
    cluster.wait_for_nodes()
    return cluster


def write_status(path: Path, **values: Any) -> None:
    """Add ``values`` to the JSON status file (written whole and renamed: a reader never sees half of it)."""
    status = json.loads(path.read_text()) if path.is_file() else {}
    status.update(values)
    scratch = path.with_suffix(".tmp")
    scratch.write_text(json.dumps(status))
    scratch.replace(path)


def wait_for_signal() -> None:
    """Block until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def main() -> int:
    status, gcs_port, temp_dir = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    cluster = start_cluster(gcs_port, temp_dir)
    write_status(status, address=cluster.address, cluster_up=time.monotonic(), pid=os.getpid())
    try:
        wait_for_signal()
    finally:
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
