"""Instructions per request in the server's parent process, against a bare aiohttp handler, optionally before/after.

    .venv/bin/python benchmarks/instructions.py [--baseline COMMIT] [--requests 500] [--rounds 2]

The parent process (HTTP, routing, batching, the pipe to the workers) runs under an instruction counter: ``perf stat
-e instructions:u -p PID`` where the machine's perf supports the event, else valgrind's callgrind on the parent only
(workers are separate programs the parent executes, so they run natively; that is checked). Callgrind starts with
instrumentation off, so start-up and warm-up are not counted, and ``callgrind_control`` switches it on around each
load. The load is an exact number of keep-alive POSTs of the W1 input (digit.png to the ConvNet) from a small client
in this process, at concurrency 1 and 8, on loopback. The same client and counter measure ``bare_aiohttp.py``, the
reference. The counter also runs over an idle window of each server: what its timers cost per second, taken off
each load in proportion to its length (under valgrind the parent is many times slower, so its timers would
otherwise count that many times too much per request).

The servers run HEAD as committed (a git worktree, so uncommitted edits do not count) and, with ``--baseline``, that
commit too; all run at once and are measured in turn (bare, baseline, head, then the reverse). Medians over the
rounds are printed as a table and written to ``results/instructions-<date>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

import psutil
from run import (
    HERE,
    PYTHON,
    WORK,
    Server,
    clean_env,
    ensure_assets,
    free_port,
    log,
    modelserve_server,
    modelserve_store,
    temporary_checkout,
    write_results,
)

MODEL = "convnet"  # W1
CONCURRENCY = (1, 8)
WARMUP = 200  # requests before each counted load, not counted
IDLE_S = 3.0
LOAD_TIMEOUT_S = 600.0


# ---- counters -----------------------------------------------------------------------------------------------------


class Counter(Protocol):
    name: str

    def prefix(self, tag: str) -> list[str]:
        """What goes before the server's command (empty when the counter attaches to a running process)."""

    def start(self, pid: int) -> None:
        """Begin counting the process's user-space instructions."""

    def stop(self, pid: int) -> int:
        """Stop counting; the instructions since ``start``."""


def perf_supported() -> bool:
    if shutil.which("perf") is None:
        return False
    done = subprocess.run(
        ["perf", "stat", "-x,", "-e", "instructions:u", "true"], capture_output=True, text=True, check=False
    )
    return done.returncode == 0 and "<not" not in done.stderr


class Perf:
    """``perf stat`` attached to the running parent for the length of a load."""

    name = "perf stat -e instructions:u"

    def __init__(self) -> None:
        self._running: dict[int, subprocess.Popen[str]] = {}

    def prefix(self, tag: str) -> list[str]:
        return []

    def start(self, pid: int) -> None:
        self._running[pid] = subprocess.Popen(
            ["perf", "stat", "-x,", "-e", "instructions:u", "-p", str(pid)], stderr=subprocess.PIPE, text=True
        )
        time.sleep(0.2)  # perf attaches asynchronously; the load must not start before it counts

    def stop(self, pid: int) -> int:
        process = self._running.pop(pid)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        for line in err.splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[2].startswith("instructions") and fields[0].isdigit():
                return int(fields[0])
        raise RuntimeError(f"no instruction count from perf: {err!r}")


class Callgrind:
    """The parent under valgrind's callgrind, instrumented only between ``start`` and ``stop``."""

    name = "valgrind --tool=callgrind"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("*.out*"):
            old.unlink()

    def prefix(self, tag: str) -> list[str]:
        return ["valgrind", "--tool=callgrind", "--trace-children=no", "--instr-atstart=no",
                f"--callgrind-out-file={self.directory / tag}.out.%p"]  # fmt: skip

    def _control(self, pid: int, *options: str) -> None:
        subprocess.run(["callgrind_control", *options, str(pid)], check=True, capture_output=True, timeout=60)

    def start(self, pid: int) -> None:
        self._control(pid, "--instr=on")
        self._control(pid, "--zero")

    def stop(self, pid: int) -> int:
        before = set(self.directory.glob(f"*.out.{pid}.*"))
        self._control(pid, "--dump")
        self._control(pid, "--instr=off")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for dump in set(self.directory.glob(f"*.out.{pid}.*")) - before:
                for line in dump.read_text().splitlines():
                    if line.startswith("totals:"):
                        return int(line.split()[1])
            time.sleep(0.1)
        raise RuntimeError(f"callgrind wrote no dump for {pid}")


# ---- the client ---------------------------------------------------------------------------------------------------


async def _read_response(reader: asyncio.StreamReader) -> int:
    """One HTTP/1.1 response with a Content-Length body; its status."""
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        elif name.strip().lower() == b"transfer-encoding":
            raise RuntimeError("chunked responses are not read by this client")
    await reader.readexactly(length)
    return status


class Connections:
    """``concurrency`` keep-alive connections that send exactly the number of POSTs asked for, one at a time each."""

    def __init__(self, url: str, body: bytes, concurrency: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.request = (
            f"POST {parts.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.concurrency = concurrency
        self.streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def open(self) -> None:
        for _ in range(self.concurrency):
            self.streams.append(await asyncio.open_connection(self.host, self.port))

    async def send(self, requests: int) -> int:
        """Send ``requests`` POSTs over the connections; the number of answers that were not 200."""
        remaining = [requests]
        errors = [0]

        async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while remaining[0] > 0:
                remaining[0] -= 1
                writer.write(self.request)
                if await _read_response(reader) != 200:
                    errors[0] += 1

        await asyncio.wait_for(asyncio.gather(*(one(r, w) for r, w in self.streams)), LOAD_TIMEOUT_S)
        return errors[0]

    async def close(self) -> None:
        for _, writer in self.streams:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        self.streams = []


# ---- the measurement ----------------------------------------------------------------------------------------------


@dataclass
class Sample:
    concurrency: int
    requests: int
    errors: int
    instructions: int  # during the load, as counted
    seconds: float  # the load's length
    idle_per_s: float  # the same server's instructions per second with nothing to do

    @property
    def per_request(self) -> float:
        return (self.instructions - self.idle_per_s * self.seconds) / self.requests


async def _idle_rate(counter: Counter, pid: int) -> float:
    await asyncio.to_thread(counter.start, pid)
    started = time.monotonic()
    await asyncio.sleep(IDLE_S)
    counted = await asyncio.to_thread(counter.stop, pid)
    return counted / (time.monotonic() - started)


async def _measure(counter: Counter, pid: int, url: str, body: bytes, requests: int) -> list[Sample]:
    idle = await _idle_rate(counter, pid)
    samples = []
    for concurrency in CONCURRENCY:
        connections = Connections(url, body, concurrency)
        await connections.open()
        try:
            if await connections.send(WARMUP):
                raise RuntimeError(f"{url} answered errors during warm-up")
            await asyncio.to_thread(counter.start, pid)
            started = time.monotonic()
            errors = await connections.send(requests)
            seconds = time.monotonic() - started
            counted = await asyncio.to_thread(counter.stop, pid)
        finally:
            await connections.close()
        samples.append(Sample(concurrency, requests, errors, counted, seconds, idle))
    return samples


def bare_server(prefix: list[str]) -> Server:
    port = free_port()
    return Server(
        "bare-aiohttp",
        lambda: [([*prefix, str(PYTHON), str(HERE / "bare_aiohttp.py"), str(port)], clean_env())],
        lambda m: f"http://127.0.0.1:{port}/predictions/{m}",
    )


def check_native_workers(server: Server) -> None:
    """The counter must see the parent only: no descendant of it may run under valgrind."""
    for child in psutil.Process(server.processes[0].pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "valgrind" in child.exe():
                raise RuntimeError(f"{server.name}: process {child.pid} runs under valgrind too")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--baseline", metavar="COMMIT", help="also measure modelserve at COMMIT, interleaved")
    parser.add_argument("--requests", type=int, default=500, help="counted requests per server and concurrency")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    counter: Counter = Perf() if perf_supported() else Callgrind(WORK / "callgrind")
    log(f"counter: {counter.name}")
    assets = ensure_assets()
    store = modelserve_store(assets)
    body = (assets / "digit.png").read_bytes()
    with contextlib.ExitStack() as stack:
        commits = {"head": stack.enter_context(temporary_checkout("HEAD"))}
        if args.baseline:
            commits = {"baseline": stack.enter_context(temporary_checkout(args.baseline)), **commits}
        servers = {"bare aiohttp": bare_server(counter.prefix("bare"))}
        for role, (tag, source) in commits.items():
            servers[f"modelserve ({role})"] = modelserve_server(store, [MODEL], tag, source, counter.prefix(role))
        for name, server in servers.items():
            stack.callback(server.stop)
            log(f"starting {name}")
            server.start(assets, [MODEL], timeout=600)
            check_native_workers(server)
        samples: dict[str, list[Sample]] = {name: [] for name in servers}
        for round_index in range(args.rounds):
            order = list(servers) if round_index % 2 == 0 else list(servers)[::-1]
            for name in order:
                server = servers[name]
                got = asyncio.run(
                    _measure(counter, server.processes[0].pid, server.url_for(MODEL), body, args.requests)
                )
                samples[name].extend(got)
                log(f"round {round_index + 1} {name}: " + ", ".join(
                    f"c={s.concurrency} {s.per_request / 1000:.0f}k/request ({s.seconds:.0f} s, {s.errors} errors)"
                    for s in got
                ))  # fmt: skip
    commit_of = {"bare aiohttp": ""} | {f"modelserve ({r})": tag.split("@")[1] for r, (tag, _) in commits.items()}
    summary: dict[str, dict[str, float]] = {
        name: {
            str(c): statistics.median(s.per_request for s in got if s.concurrency == c) for c in CONCURRENCY
        }
        for name, got in samples.items()
    }  # fmt: skip
    lines = [
        f"parent instructions per request ({counter.name}), W1 POSTs on keep-alive connections, "
        f"medians of {args.rounds} rounds of {args.requests} requests, net of idle timers",
        "",
        "| server | commit | concurrency | requests | instructions/request | ratio to bare aiohttp |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, by_concurrency in summary.items():
        for c, value in by_concurrency.items():
            ratio = value / summary["bare aiohttp"][c]
            lines.append(
                f"| {name} | {commit_of[name] or '-'} | {c} | {args.requests} | {value / 1000:.0f}k | {ratio:.2f} |"
            )
    print("\n".join(lines))
    write_results("instructions", {
        "counter": counter.name, "commits": commit_of, "requests": args.requests, "rounds": args.rounds,
        "warmup": WARMUP, "idle_s": IDLE_S, "summary": summary,
        "samples": {n: [asdict(s) | {"per_request": s.per_request} for s in got] for n, got in samples.items()},
        "table": lines,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
