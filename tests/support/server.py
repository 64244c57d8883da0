"""Run a real ``modelserve --foreground`` process on loopback port 0 and talk to it over HTTP."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

from modelserve.archive.packer import PackRequest, pack_archive
from tests.support.paths import SUPPORT, script

PORT0_CONFIG = """\
inference_address=http://127.0.0.1:0
management_address=http://127.0.0.1:0
metrics_address=http://127.0.0.1:0
grpc_inference_port=0
grpc_management_port=0
"""


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def call(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30.0
) -> Response:
    """One HTTP request on a fresh connection."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path or "/", body=body, headers=headers or {})
        response = conn.getresponse()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()


def wait_for(predicate: Callable[[], bool], timeout: float, message: str, interval: float = 0.05) -> None:
    """Poll ``predicate`` until true, or fail with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s: {message}")


def make_archive(
    store: Path,
    name: str,
    handler: str,
    version: str = "1.0",
    config_yaml: str | None = None,
    extra: dict[str, bytes] | None = None,
    **kwargs: Any,
) -> Path:
    """Pack a test handler from tests/support (or a built-in name) into ``store``."""
    work = store.parent / f"src-{name}-{version}"
    work.mkdir(parents=True, exist_ok=True)
    file_part, sep, function = handler.partition(":")
    handler_path = SUPPORT / file_part if (SUPPORT / file_part).is_file() else Path(file_part)
    config_file = None
    if config_yaml is not None:
        config_file = work / "model-config.yaml"
        config_file.write_text(config_yaml)
    extras = []
    for file_name, data in (extra or {}).items():
        (work / file_name).write_bytes(data)
        extras.append(work / file_name)
    handler_arg = str(handler_path) + sep + function if handler_path.is_file() else handler
    out = work / "out"
    out.mkdir(exist_ok=True)
    request = PackRequest(model_name=name, handler=handler_arg, version=version, config_file=config_file,
                          extra_files=extras, export_path=out, force=True, **kwargs)  # fmt: skip
    path = pack_archive(request)
    # several versions of one model sit side by side in the store: name-2.0.mar
    target_name = path.name if version == "1.0" else path.name.replace(name, f"{name}-{version}", 1)
    target = store / target_name
    if target.is_dir():
        shutil.rmtree(target)
    path.replace(target)
    return target


class ServerProcess:
    """A modelserve server in the foreground, in its own working directory."""

    def __init__(
        self,
        workdir: Path,
        store: Path,
        models: list[str],
        extra_args: list[str] | None = None,
        config: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.store = store
        self.models = models
        self.extra_args = extra_args or []
        self.config_text = PORT0_CONFIG + config
        self.env = env or {}
        self.lines: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.inference = self.management = self.metrics = ""
        # host:port of the gRPC servers ("" while unknown or when gRPC is off)
        self.grpc_inference = self.grpc_management = ""
        self._grpc_reported = False
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 60.0) -> ServerProcess:
        config_path = self.workdir / "config.properties"
        config_path.write_text(self.config_text)
        args = [script("modelserve"), "--start", "--foreground", "--model-store", str(self.store),
                "--ts-config", str(config_path), "--pid-file", str(self.workdir / "modelserve.pid"),
                *self.extra_args]  # fmt: skip
        if self.models:
            args += ["--models", *self.models]
        env = {**os.environ, **self.env}
        self.process = subprocess.Popen(args, cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env=env)  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_for(lambda: (bool(self.metrics) and self._grpc_reported) or self.process is None
                 or self.process.poll() is not None, timeout, "server did not report its addresses")  # fmt: skip
        if not self.metrics:
            raise AssertionError("server exited early:\n" + "\n".join(self.lines[-30:]))
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            for attr, label in (("inference", "Inference"), ("management", "Management"), ("metrics", "Metrics")):
                match = re.search(rf"{label} API bound to (http://[0-9a-zA-Z.\[\]:]+)", line)
                if match:
                    setattr(self, attr, match.group(1))
            grpc = re.search(r"gRPC (Inference|Management) API bound to ([0-9a-zA-Z.\[\]:]+)", line)
            if grpc:
                setattr(self, f"grpc_{grpc.group(1).lower()}", grpc.group(2))
            if "gRPC API disabled" in line or (self.grpc_inference and self.grpc_management):
                self._grpc_reported = True

    @property
    def token(self) -> str:
        data = json.loads((self.workdir / "key_file.json").read_text())
        return str(data["management"]["key"])

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def manage(self, method: str, path: str, timeout: float = 60.0) -> Response:
        return call(method, self.management + path, headers=self.auth(), timeout=timeout)

    def predict(
        self, model: str, body: bytes = b"", headers: dict[str, str] | None = None, timeout: float = 30.0
    ) -> Response:
        return call("POST", f"{self.inference}/predictions/{model}", body, headers, timeout)

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]

    def log_text(self) -> str:
        return "\n".join(self.lines)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait for a clean exit, and make sure no worker survives."""
        if self.process is None:
            return 0
        children = []
        with contextlib.suppress(psutil.NoSuchProcess):
            children = psutil.Process(self.process.pid).children(recursive=True)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                    child.kill()
                    raise AssertionError(f"worker {child.pid} outlived the server")
        if self._reader is not None:
            self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None
        return code


@contextlib.contextmanager
def running_server(workdir: Path, store: Path, models: list[str], **kwargs: Any) -> Iterator[ServerProcess]:
    server = ServerProcess(workdir, store, models, **kwargs)
    try:
        yield server.start()
    finally:
        server.stop()
