"""Proof that a Ray cluster of this machine, and a driver of it in another process, stay on loopback.

Two programs, each run as its own process (optionally under ``strace -f``), so that the proof sees the whole life of
every Ray process, the first ``connect`` of the head included:

- ``python -m tests.support.ray_loopback cluster WORK STATUS`` starts a head and named nodes (``RayNodes``, each
  node with a custom resource named after it), writes the GCS address, node ids and pids to STATUS, waits for its
  stdin to close, shuts the cluster down and writes which of its processes outlived the shutdown. It never connects
  to the cluster as a driver (``ray.init``): the cluster lives without one.
- ``python -m tests.support.ray_loopback drive ADDRESS WORK READY NODE...`` joins the cluster as a driver the way the
  server does (``ray_env.connect_ray``), runs a task and an actor on each named node (placed by its resource), writes
  where they ran to READY, and holds the actors until its stdin closes.

The checks (run by the test process) read every TCP/UDP socket of those processes and their children
(``non_loopback_sockets``: listening on 0.0.0.0 or :: counts as off loopback) and every address a traced process
connected, sent to or bound (``off_loopback_calls`` over the ``strace`` output).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

# the syscalls that name a peer or a local address (sendmmsg: the resolver's parallel A/AAAA queries)
TRACED_CALLS = "connect,bind,sendto,sendmsg,sendmmsg"
_INET4 = re.compile(r'inet_addr\("([^"]+)"\)')
_INET6 = re.compile(r'inet_pton\(AF_INET6, "([^"]+)"')
_CALL = re.compile(r"^\s*(\d+)\s+(?:<\.\.\. )?(\w+)\(")


@dataclass(frozen=True)
class Endpoint:
    """One socket of a process whose local or remote address is not loopback."""

    pid: int
    process: str
    kind: str  # tcp / udp
    status: str
    local: str
    remote: str


@dataclass(frozen=True)
class OffLoopbackCall:
    """One traced system call that named an address that is not loopback."""

    pid: int
    call: str
    address: str
    line: str


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IPv4 or IPv6 address, IPv4-mapped included) is a loopback address."""
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def process_tree(roots: Iterable[int]) -> dict[int, psutil.Process]:
    """The processes ``roots`` and all their descendants that are alive now."""
    found: dict[int, psutil.Process] = {}
    for pid in roots:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                found[process.pid] = process
    return found


def non_loopback_sockets(processes: Iterable[psutil.Process]) -> list[Endpoint]:
    """Every TCP/UDP socket of ``processes`` with a local or remote address off loopback (0.0.0.0 and :: too)."""
    found: list[Endpoint] = []
    for process in processes:
        try:
            name = process.name()
            # net_connections from psutil 6 on; connections before (the project allows psutil 5.9)
            listing = getattr(process, "net_connections", None) or process.connections
            connections = listing(kind="inet")
        except psutil.Error:  # gone meanwhile
            continue
        for conn in connections:
            addresses = [conn.laddr, *([conn.raddr] if conn.raddr else [])]
            if all(is_loopback(address.ip) for address in addresses):
                continue
            found.append(
                Endpoint(
                    pid=process.pid,
                    process=name,
                    kind="udp" if conn.type == socket.SOCK_DGRAM else "tcp",
                    status=conn.status,
                    local=f"{conn.laddr.ip}:{conn.laddr.port}",
                    remote=f"{conn.raddr.ip}:{conn.raddr.port}" if conn.raddr else "",
                )
            )
    return found


def off_loopback_calls(trace: Path) -> list[OffLoopbackCall]:
    """The traced calls (``strace -f`` output) that connected, sent to or bound an address off loopback."""
    found: list[OffLoopbackCall] = []
    for line in trace.read_text(encoding="utf-8", errors="replace").splitlines():
        call = _CALL.match(line)
        if call is None:
            continue
        for address in [*_INET4.findall(line), *_INET6.findall(line)]:
            if not is_loopback(address):
                found.append(OffLoopbackCall(int(call.group(1)), call.group(2), address, line.strip()[:300]))
    return found


def strace_usable() -> bool:
    """Whether ``strace -f`` can trace a child here (it is installed and ptrace is allowed)."""
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=connect", "-o", os.devnull, "true"],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return probe.returncode == 0


def traced(command: list[str], trace: Path | None) -> list[str]:
    """``command`` under ``strace -f`` writing to ``trace`` (or as it is, without a trace)."""
    if trace is None:
        return command
    return ["strace", "-f", "--seccomp-bpf", "-qq", "-e", f"trace={TRACED_CALLS}", "-o", str(trace), *command]


def stop_processes(processes: Iterable[psutil.Process], timeout: float) -> list[str]:
    """Wait up to ``timeout`` s for ``processes`` to end, then kill what is left of them (these, no others: a
    ``psutil.Process`` will not signal a later process that reuses the pid). Returns what had to be killed."""
    alive = [process for process in processes if process.is_running()]
    _, alive = psutil.wait_procs(alive, timeout=timeout)
    leftovers = []
    for process in alive:
        with contextlib.suppress(psutil.Error):
            leftovers.append(f"{process.pid} {process.name()}")
            process.kill()
    psutil.wait_procs(alive, timeout=5)
    return leftovers


def _wait_stdin_closed() -> None:
    while sys.stdin.read(4096):
        pass


def _write_json(path: Path, value: dict[str, Any]) -> None:
    part = path.with_suffix(".part")
    part.write_text(json.dumps(value), encoding="utf-8")
    part.replace(path)  # the reader never sees half a file


def run_cluster(work_dir: Path, status: Path, names: list[str]) -> None:
    """The ``cluster`` program: start the nodes, report, wait for stdin to close, shut down, report leftovers."""
    from modelserve.workers.ray_env import set_defaults

    set_defaults()  # before Ray is imported
    from tests.support.ray_nodes import RayNodes

    started = time.monotonic()
    nodes = RayNodes(work_dir)
    try:
        nodes.start(names)
        up_s = time.monotonic() - started
        _write_json(
            status,
            {
                "address": nodes.address,
                "up_s": up_s,
                "node_ids": {name: nodes.node_id(name) for name in names},
                "pids": sorted(nodes.pids()),
            },
        )
        _wait_stdin_closed()
    finally:
        seen = [p for pid, p in process_tree([os.getpid()]).items() if pid != os.getpid()]  # all it started
        begun = time.monotonic()
        nodes.shutdown()
        leftovers = stop_processes(seen, timeout=10)
        result = {"down_s": time.monotonic() - begun, "seen": len(seen), "leftovers": leftovers}
        _write_json(status.with_name(status.name + ".done"), result)


def run_driver(address: str, work_dir: Path, ready: Path, names: list[str]) -> None:
    """The ``drive`` program: a task and an actor on each node, where they ran to ``ready``, then hold the actors."""
    from modelserve.workers.ray_env import connect_ray, set_defaults, shutdown

    set_defaults()  # before Ray is imported
    import ray

    @ray.remote(num_cpus=0)
    def where() -> tuple[str, int]:
        return ray.get_runtime_context().get_node_id(), os.getpid()

    @ray.remote(num_cpus=0)
    class Where:
        def where(self) -> tuple[str, int]:
            return ray.get_runtime_context().get_node_id(), os.getpid()

    connect_ray(address, work_dir)
    try:
        tasks = {name: where.options(resources={name: 0.5}).remote() for name in names}
        actors = {name: Where.options(resources={name: 0.5}).remote() for name in names}  # type: ignore[attr-defined]
        calls = {name: actor.where.remote() for name, actor in actors.items()}
        placed = {
            name: {"task": ray.get(tasks[name], timeout=60), "actor": ray.get(calls[name], timeout=60)}
            for name in names
        }
        _write_json(ready, {"placed": placed, "driver_node": ray.get_runtime_context().get_node_id()})
        _wait_stdin_closed()
        for actor in actors.values():
            ray.kill(actor)
    finally:
        shutdown()


def main(argv: list[str]) -> None:
    if argv[:1] == ["cluster"] and len(argv) >= 3:
        run_cluster(Path(argv[1]), Path(argv[2]), argv[3:] or ["head", "node_a", "node_b"])
    elif argv[:1] == ["drive"] and len(argv) >= 5:
        run_driver(argv[1], Path(argv[2]), Path(argv[3]), argv[4:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
