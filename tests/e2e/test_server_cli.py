"""``modelserve --start`` / ``--stop`` as a user types them: daemon, PID file, clean stop, clear errors."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import psutil

from tests.support.paths import script
from tests.support.server import PORT0_CONFIG, call, make_archive


def run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [script("modelserve"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_start_daemonizes_and_stop_leaves_no_process(tmp_path: Path, store: Path) -> None:
    make_archive(store, "echo", "echo_handler.py", config_yaml="minWorkers: 1\n")
    (tmp_path / "config.properties").write_text(PORT0_CONFIG)
    pid_file = tmp_path / "ms.pid"
    common = ["--pid-file", str(pid_file)]
    started = run("--start", "--model-store", str(store), "--models", "echo=echo.mar", "--ts-config",
                  "config.properties", "--ncs", *common, cwd=tmp_path)  # fmt: skip
    assert started.returncode == 0, started.stderr
    inference = re.search(r"Inference API bound to (http://\S+)", started.stdout)
    assert inference, started.stdout
    assert "Management API bound to" in started.stdout and "Metrics API bound to" in started.stdout
    pid = int(pid_file.read_text())
    server = psutil.Process(pid)
    tree = [server, *server.children(recursive=True)]
    assert len(tree) >= 2, "server plus its worker"
    assert call("POST", inference.group(1) + "/predictions/echo", b"ping").body == b"ping"
    again = run("--start", "--model-store", str(store), *common, cwd=tmp_path)
    assert again.returncode != 0 and "already running" in again.stderr
    stopped = run("--stop", *common, cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    assert not pid_file.exists()
    for process in tree:
        assert not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    assert (tmp_path / "logs" / "modelserve.log").read_text().count("modelserve stopped") == 1


def test_stop_without_server_says_so(tmp_path: Path) -> None:
    result = run("--stop", "--pid-file", str(tmp_path / "none.pid"), cwd=tmp_path)
    assert result.returncode != 0 and "no server is running" in result.stderr


def test_start_failure_reports_the_reason(tmp_path: Path, store: Path) -> None:
    (tmp_path / "bad.properties").write_text("job_queue_size=-5\n")
    result = run("--start", "--model-store", str(store), "--ts-config", "bad.properties", cwd=tmp_path)
    assert result.returncode != 0
    assert "job_queue_size" in result.stderr and "Traceback" not in result.stderr
    missing = run("--start", "--model-store", str(tmp_path / "nope"), cwd=tmp_path)
    assert missing.returncode != 0 and "not a directory" in missing.stderr


def test_port_in_use_is_reported(tmp_path: Path, store: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "c.properties").write_text(
            PORT0_CONFIG.replace("8080", "x") + f"inference_address=http://127.0.0.1:{port}\n"
        )
        result = run("--start", "--model-store", str(store), "--ts-config", "c.properties", "--ncs",
                     "--pid-file", str(tmp_path / "p.pid"), cwd=tmp_path)  # fmt: skip
    assert result.returncode != 0
    assert "cannot bind" in result.stderr and str(port) in result.stderr
