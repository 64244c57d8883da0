"""Ray on loopback, safe by default: the settings that keep a Ray instance's traffic on this machine.

Without them, on this kind of machine, Ray's head asks the cloud metadata address (169.254.169.254) which cloud it
runs in unless it finds a ``ray_bootstrap_config.yaml`` saying ``provider: {type: local}`` in HOME; nodes speak gRPC
over the machine's non-loopback address; usage statistics are reported; a client of a cluster with token
authentication fails after about 21 s with a bare ConnectionError unless ``RAY_AUTH_MODE`` is set.

Ray reads some of them when it is imported (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` decides the node address then):
``set_defaults`` runs before Ray is imported. The processes Ray starts inherit them.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BOOTSTRAP_FILE = "ray_bootstrap_config.yaml"
LOOPBACK = "127.0.0.1"


def loopback_environment(work_dir: Path | None) -> dict[str, str]:
    """The variables for a Ray instance (or a driver of one) that stays on loopback; with ``work_dir``, HOME too
    (where Ray looks for the bootstrap file that says there is no cloud), and the file is written there."""
    variables = {
        "RAY_USAGE_STATS_ENABLED": "0",
        # a cluster not started by ray.init still sends a "usage stats disabled" report: to nowhere on loopback
        "RAY_USAGE_STATS_REPORT_URL": "http://127.0.0.1:9/",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
        "RAY_NODE_IP_ADDRESS": os.environ.get("RAY_NODE_IP_ADDRESS", LOOPBACK),
    }
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        bootstrap = work_dir / BOOTSTRAP_FILE
        if not bootstrap.is_file():
            bootstrap.write_text("provider:\n  type: local\n", encoding="utf-8")
        variables["HOME"] = str(work_dir)
    return variables


def set_defaults() -> None:
    """Ray's loopback variables in this process's environment (an operator's own values win), HOME excepted."""
    for key, value in loopback_environment(None).items():
        os.environ.setdefault(key, value)


@contextlib.contextmanager
def _loopback(work_dir: Path) -> Iterator[None]:
    """Ray's variables set for good (an operator's own values win); HOME only while Ray starts its processes."""
    variables = loopback_environment(work_dir)
    home = variables.pop("HOME")
    for key, value in variables.items():
        os.environ.setdefault(key, value)
    saved = os.environ.get("HOME")
    os.environ["HOME"] = home
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = saved


def start_local_ray(work_dir: Path, num_cpus: int | None = None, object_store_memory: int | None = None) -> Any:
    """Start a Ray instance of this machine owned by the caller (it stops with ``shutdown``), loopback only."""
    import ray

    with _loopback(work_dir):
        return ray.init(
            _temp_dir=str(work_dir / "ray"),
            num_cpus=num_cpus,
            object_store_memory=object_store_memory,
            include_dashboard=False,
            _node_ip_address=LOOPBACK,
            namespace="modelserve",
            log_to_driver=True,
            logging_level=logging.WARNING,
        )


def connect_ray(address: str, work_dir: Path) -> Any:
    """Join an existing cluster as its driver (``auto`` or the head's ``host:port``)."""
    import ray

    with _loopback(work_dir):
        return ray.init(address=address, namespace="modelserve", log_to_driver=True, logging_level=logging.WARNING)


def shutdown() -> None:
    """Leave the cluster; a Ray instance started by ``start_local_ray`` stops with its processes."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
