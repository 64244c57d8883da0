"""Run the real TorchServe 0.12.0 (from .venv-torchserve) on free loopback ports, to compare modelserve against it.

TorchServe keeps its pid file, its worker sockets and its extracted models in the temp directory, and
``torchserve --stop`` stops whichever server that pid file names; every instance here gets a private one, so it never
sees (or stops) another TorchServe on the machine. Its logs go to ``logs/`` under the working directory.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
import pytest

from tests.support.paths import REPO
from tests.support.server import Response, call

TS_VENV = REPO / ".venv-torchserve"
TS_BIN = TS_VENV / "bin"
COMPLETE_MARKER = TS_VENV / ".complete"  # written by scripts/setup.sh once every package is installed

# inference, management, metrics, and the two gRPC servers TorchServe always starts (7070/7071 by default)
PORT_KEYS = ("inference", "management", "metrics", "grpc_inference", "grpc_management")
OWNED_KEYS = ("inference_address", "management_address", "metrics_address", "grpc_inference_port",
              "grpc_management_port", "grpc_inference_address", "grpc_management_address")  # fmt: skip
BIND_CONFLICT = ("Address already in use", "Failed to bind")
WORKER_DIED = "Backend worker process died"  # in logs/model_log.log, each time a worker fails to load or crashes
WORKER_DEATHS_AT_START = 3  # TorchServe retries a failing worker forever: a start gives up after this many deaths
LOG4J_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d")
UNIX_SOCKET_MAX = 107  # sun_path is 108 bytes with the terminating NUL


class TorchServeError(AssertionError):
    """TorchServe did not start, or a model of it did not become READY."""


def require_torchserve() -> None:
    """Fail (never skip) the calling test when the TorchServe venv or Java is missing."""
    if not (TS_BIN / "torchserve").is_file() or not COMPLETE_MARKER.is_file():
        pytest.fail(
            f"TorchServe 0.12.0 is not installed in {TS_VENV.name}/ at the repository root: run scripts/setup.sh",
            pytrace=False,
        )
    java_home = os.environ.get("JAVA_HOME")
    java = Path(java_home) / "bin" / "java" if java_home else shutil.which("java")
    if java is None or not Path(java).is_file():
        pytest.fail("TorchServe needs Java 11 or later on PATH (or JAVA_HOME)", pytrace=False)


def free_ports(count: int) -> list[int]:
    """Distinct loopback ports free a moment ago (bound to port 0, then released: TorchServe cannot bind 0)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no {path.name})"
    return "\n".join(text[-lines:])


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as file:
            file.seek(offset)
            return file.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _model_names(entries: Sequence[str]) -> list[str]:
    """Names given explicitly as ``name=archive`` in ``--models``."""
    return [entry.split("=", 1)[0] for entry in entries if "=" in entry and "://" not in entry.split("=", 1)[0]]


class TorchServeProcess:
    """One TorchServe, started with ``torchserve --start --foreground`` in ``workdir`` (its own session)."""

    def __init__(
        self,
        workdir: Path,
        store: Path,
        models: Sequence[str],
        config_lines: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        for line in config_lines:
            key = line.split("=", 1)[0].strip()
            if key in OWNED_KEYS:
                raise ValueError(f"the harness picks TorchServe's ports and addresses itself, not {key!r}")
        self.workdir = workdir
        self.store = store
        self.models = list(models)
        self.config_lines = list(config_lines)
        self.extra_args = list(extra_args)
        self.env = env or {}
        self.tmpdir = workdir / "ts-tmp"
        self._own_tmpdir = False
        self._model_log_offset = self._out_offset = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}
        self.inference = self.management = self.metrics = ""
        self.started_in = 0.0  # seconds from launch to every model READY (the last attempt)
        self.attempts = 0
        self.seen_pids: set[int] = set()  # every TorchServe process seen: the launcher, the JVM, its workers
        self.killed_pids: list[int] = []  # those still alive after the graceful stop, killed by the harness

    # ---- start -----------------------------------------------------------------------------------------------------

    def start(self, timeout: float = 180.0, attempts: int = 3) -> TorchServeProcess:
        require_torchserve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._make_tmpdir()
        deadline = time.monotonic() + timeout
        for attempt in range(1, attempts + 1):
            self.attempts = attempt
            launched = time.monotonic()
            self._launch()
            try:
                self._wait_ready(deadline)
            except TorchServeError:
                bind_conflict = self._exited() and any(text in self._output() for text in BIND_CONFLICT)
                self._stop_processes()
                if bind_conflict and attempt < attempts and time.monotonic() < deadline:
                    continue  # a port picked for it was taken before it bound: pick again
                raise
            self.started_in = time.monotonic() - launched
            return self
        raise AssertionError("unreachable")

    def _make_tmpdir(self) -> None:
        if len(str(self.tmpdir / ".ts.sock.65535")) > UNIX_SOCKET_MAX:
            # the workers' unix sockets live in the temp dir: keep their paths short, still private to this server
            self.tmpdir = Path(tempfile.mkdtemp(prefix="ts-"))
            self._own_tmpdir = True
        self.tmpdir.mkdir(parents=True, exist_ok=True)

    def _child_env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("TS_", "MODELSERVE_", "PYTHON", "VIRTUAL_ENV", "CONDA_"))}  # fmt: skip
        env.update(self.env)
        env.update(TMPDIR=str(self.tmpdir), TEMP=str(self.tmpdir), TMP=str(self.tmpdir),
                   PATH=f"{TS_BIN}{os.pathsep}{os.environ.get('PATH', '')}")  # fmt: skip
        return env

    def _launch(self) -> None:
        self.ports = dict(zip(PORT_KEYS, free_ports(len(PORT_KEYS)), strict=True))
        self.inference = f"http://127.0.0.1:{self.ports['inference']}"
        self.management = f"http://127.0.0.1:{self.ports['management']}"
        self.metrics = f"http://127.0.0.1:{self.ports['metrics']}"
        config = [
            f"inference_address={self.inference}",
            f"management_address={self.management}",
            f"metrics_address={self.metrics}",
            "grpc_inference_address=127.0.0.1",
            "grpc_management_address=127.0.0.1",
            f"grpc_inference_port={self.ports['grpc_inference']}",
            f"grpc_management_port={self.ports['grpc_management']}",
            "default_workers_per_model=1",
            "vmargs=-Xmx512m -XX:+UseSerialGC -XX:+ExitOnOutOfMemoryError",  # a small JVM, few GC threads
            *self.config_lines,
        ]
        self._model_log_offset = _size(self.workdir / "logs" / "model_log.log")
        self._out_offset = _size(self.workdir / "torchserve.out")
        config_path = self.workdir / "torchserve.properties"
        config_path.write_text("\n".join(config) + "\n")
        args = [str(TS_BIN / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth",
                "--ts-config", str(config_path), "--model-store", str(self.store), *self.extra_args]  # fmt: skip
        if self.models:
            args += ["--models", *self.models]
        with open(self.workdir / "torchserve.out", "ab") as out:
            # a session of its own: the launcher, the JVM and every worker share one process group
            self.process = subprocess.Popen(args, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=out,
                                            stderr=subprocess.STDOUT, env=self._child_env(),
                                            start_new_session=True)  # fmt: skip
        self.seen_pids.add(self.process.pid)

    def _exited(self) -> bool:
        """Whether the launcher has exited, without reaping it (its process group stays ours until then)."""
        if self.process is None:
            return True
        if self.process.returncode is not None:
            return True
        return os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def _tree(self) -> list[psutil.Process]:
        if self.process is None:
            return []
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.seen_pids.update(child.pid for child in children)
        return children

    def _listening_on_our_ports(self) -> bool:
        """The JVM itself listens on every port picked for it (not some other server that took one first)."""
        wanted = {self.ports[key] for key in ("inference", "management", "metrics")}
        for child in self._tree():
            with contextlib.suppress(psutil.Error):
                if child.name() == "java":
                    connections = getattr(child, "net_connections", child.connections)  # psutil >= 6 renamed it
                    bound = {c.laddr.port for c in connections(kind="inet") if c.status == psutil.CONN_LISTEN}
                    return wanted <= bound
        return False

    def _models_ready(self) -> bool:
        listed = call("GET", f"{self.management}/models?limit=1000", timeout=5)
        if listed.status != 200:
            return False
        names = {m["modelName"] for m in listed.json()["models"]} | set(_model_names(self.models))
        for name in sorted(names):
            described = call("GET", f"{self.management}/models/{name}", timeout=5)
            if described.status != 200:
                return False
            for version in described.json():
                workers = version.get("workers", [])
                self.seen_pids.update(int(w["pid"]) for w in workers if str(w.get("pid", "")).isdigit())
                if len(workers) < max(1, int(version.get("minWorkers", 1))):
                    return False
                if any(w.get("status") != "READY" for w in workers):
                    return False
        return True

    def _wait_ready(self, deadline: float) -> None:
        stage = "the HTTP ports"
        while time.monotonic() < deadline:
            if self._exited():
                raise self._failure("TorchServe exited during start")
            deaths = self._model_log_since_launch().count(WORKER_DIED)
            if deaths >= WORKER_DEATHS_AT_START:
                raise self._failure(f"TorchServe workers died {deaths} times before every model was READY")
            with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
                if stage == "the HTTP ports" and self._listening_on_our_ports():
                    stage = "/ping"
                if stage == "/ping" and call("GET", f"{self.inference}/ping", timeout=5).status == 200:
                    stage = "every model's workers READY"
                if stage == "every model's workers READY" and self._models_ready():
                    return
            time.sleep(0.1)
        raise self._failure(f"TorchServe did not reach {stage} in time")

    def _output(self) -> str:
        """What the launcher printed since the last launch."""
        return _read_from(self.workdir / "torchserve.out", self._out_offset)

    def _model_log_since_launch(self) -> str:
        return _read_from(self.workdir / "logs" / "model_log.log", self._model_log_offset)

    def _launcher_tail(self, lines: int) -> str:
        """What the launcher and the JVM print outside log4j (whose lines, with their stack traces, are in logs/)."""
        text = _tail(self.workdir / "torchserve.out", 1_000_000).splitlines()
        return "\n".join([line for line in text if not LOG4J_LINE.match(line) and not line.startswith("\t")][-lines:])

    def _failure(self, what: str) -> TorchServeError:
        logs = self.workdir / "logs"
        return TorchServeError(
            f"{what} (attempt {self.attempts}, ports {self.ports}, workdir {self.workdir})\n"
            f"--- logs/ts_log.log (tail) ---\n{_tail(logs / 'ts_log.log', 40)}\n"
            f"--- logs/model_log.log (tail) ---\n{_tail(logs / 'model_log.log', 40)}\n"
            f"--- launcher output not in those logs (tail) ---\n{self._launcher_tail(15)}"
        )

    # ---- talk to it ------------------------------------------------------------------------------------------------

    def predict(
        self, model: str, body: bytes = b"", headers: dict[str, str] | None = None, timeout: float = 30.0
    ) -> Response:
        return call("POST", f"{self.inference}/predictions/{model}", body, headers, timeout)

    def manage(self, method: str, path: str, timeout: float = 60.0) -> Response:
        return call(method, self.management + path, timeout=timeout)

    def scrape(self, timeout: float = 30.0) -> Response:
        return call("GET", f"{self.metrics}/metrics", timeout=timeout)

    def log_text(self) -> str:
        """TorchServe's own log and its workers' (``logs/ts_log.log`` and ``logs/model_log.log``)."""
        logs = self.workdir / "logs"
        return "\n".join(_tail(logs / name, 1_000_000) for name in ("ts_log.log", "model_log.log"))

    def live_pids(self) -> list[int]:
        """Processes of this TorchServe still alive (zombies aside)."""
        alive = []
        for pid in sorted(self.seen_pids):
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
        return alive

    # ---- stop ------------------------------------------------------------------------------------------------------

    def stop(self, timeout: float = 30.0) -> None:
        """``torchserve --stop`` (its private pid file), then SIGKILL whatever of its process group is left."""
        try:
            self._stop_processes(timeout)
        finally:
            if self._own_tmpdir:
                shutil.rmtree(self.tmpdir, ignore_errors=True)

    def _stop_processes(self, timeout: float = 30.0) -> None:
        process = self.process
        if process is None:
            return
        tree = self._tree()
        if not self._exited():
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                # its cwd is the private temp dir: --stop also deletes ./key_file.json, which is not its to delete
                subprocess.run([str(TS_BIN / "torchserve"), "--stop"], cwd=self.tmpdir, env=self._child_env(),
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=timeout, check=False)  # fmt: skip
            _, alive = psutil.wait_procs([p for p in tree if p.is_running()], timeout=timeout)
            self.killed_pids += [p.pid for p in alive]
        # the launcher is not reaped yet, so its process group id still names this TorchServe's processes only
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        for child in tree:
            with contextlib.suppress(psutil.Error):
                child.kill()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        psutil.wait_procs([p for p in tree if p.is_running()], timeout=10)
        self.process = None


@contextlib.contextmanager
def running_torchserve(
    workdir: Path,
    store: Path,
    models: Sequence[str],
    config_lines: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 180.0,
) -> Iterator[TorchServeProcess]:
    """TorchServe serving ``models`` (``--models`` entries such as ``name=file.mar``) from ``store``, READY.

    ``config_lines`` are more ``config.properties`` lines (not addresses or ports: the harness picks those);
    ``workdir`` should be a directory of its own (created if missing): TorchServe writes ``logs/`` there.
    Stopped, with every process of it killed, when the block exits, whatever happened inside.
    """
    server = TorchServeProcess(workdir, store, models, config_lines, extra_args, env)
    try:
        yield server.start(timeout)
    finally:
        server.stop()
