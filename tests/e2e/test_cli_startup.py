"""``modelserve`` as a newcomer meets it: --version, which config.properties it reads, where its PID file goes, and
what ``--start`` says when a start-up model does not load."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import psutil

import modelserve
from tests.support.paths import script
from tests.support.server import PORT0_CONFIG, call, make_archive

ONE_WORKER = "minWorkers: 1\nmaxWorkers: 1\n"
# should a test's config file not be read, the server still never takes the default ports of the machine
PORT0_ENV = {
    f"MODELSERVE_{kind.upper()}_ADDRESS": "http://127.0.0.1:0" for kind in ("inference", "management", "metrics")
}


def run(command: str, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "TS_CONFIG_FILE"} | (env or {})
    return subprocess.run([script(command), *args], cwd=cwd, env=environ, capture_output=True, text=True,
                          timeout=180, check=False)  # fmt: skip


@contextlib.contextmanager
def stopped_at_exit(*pid_files: Path) -> Iterator[None]:
    """Whatever a test asserts, no server it started outlives it."""
    try:
        yield
    finally:
        for pid_file in pid_files:
            with contextlib.suppress(OSError, ValueError, psutil.Error):
                server = psutil.Process(int(pid_file.read_text()))
                tree = [server, *server.children(recursive=True)]
                server.send_signal(signal.SIGTERM)
                _, alive = psutil.wait_procs(tree, timeout=30)
                for process in alive:
                    process.kill()


def inference_address(stdout: str) -> str:
    match = re.search(r"Inference API bound to (http://\S+)", stdout)
    assert match, stdout
    return match.group(1)


def test_version_flags_print_the_package_version(tmp_path: Path) -> None:
    installed = version("modelserve")
    assert modelserve.__version__ == installed, "the source's version and the installed package's agree"
    for flag in ("--version", "-v"):
        server = run("modelserve", flag, cwd=tmp_path)
        assert (server.returncode, server.stdout.strip()) == (0, f"modelserve {installed}")
        archiver = run("modelserve-archive", flag, cwd=tmp_path)
        assert (archiver.returncode, archiver.stdout.strip()) == (0, f"modelserve-archive {installed}")
    with_value = run("modelserve-archive", "--version", "2.0", cwd=tmp_path)
    assert with_value.returncode == 2 and "--model-name" in with_value.stderr, "with a value it is the model's version"


def test_config_file_is_the_flag_then_ts_config_file_then_the_working_directory(tmp_path: Path, store: Path) -> None:
    # each file has a different invalid value, so the error says which file was read, and nothing is ever bound
    (tmp_path / "config.properties").write_text("job_queue_size=-7\n")
    (tmp_path / "env.properties").write_text("max_request_size=0\n")
    (tmp_path / "flag.properties").write_text("batch_size=0\n")
    with stopped_at_exit(tmp_path / "logs" / "modelserve.pid"):
        local = run("modelserve", "--start", "--model-store", str(store), cwd=tmp_path, env=PORT0_ENV)
        assert local.returncode != 0
        assert "config.properties: invalid value for job_queue_size" in local.stderr, local.stderr
        env = {**PORT0_ENV, "TS_CONFIG_FILE": str(tmp_path / "env.properties")}
        from_env = run("modelserve", "--start", "--model-store", str(store), cwd=tmp_path, env=env)
        assert "env.properties: invalid value for max_request_size" in from_env.stderr, from_env.stderr
        flag = run("modelserve", "--start", "--model-store", str(store), "--ts-config", "flag.properties",
                   cwd=tmp_path, env=env)  # fmt: skip
        assert "flag.properties: invalid value for batch_size" in flag.stderr, flag.stderr


def test_pid_file_is_in_each_servers_log_directory_so_two_servers_run_side_by_side(tmp_path: Path) -> None:
    homes = [tmp_path / "first", tmp_path / "second"]
    pid_files = [home / "logs" / "modelserve.pid" for home in homes]
    with stopped_at_exit(*pid_files):
        addresses = []
        for home in homes:
            home.mkdir()
            (home / "model_store").mkdir()
            # read from the working directory: no --ts-config, no --pid-file
            (home / "config.properties").write_text(PORT0_CONFIG + "model_store=model_store\n")
            started = run("modelserve", "--start", "--ncs", cwd=home, env=PORT0_ENV)
            assert started.returncode == 0, started.stderr
            assert f"Configuration file: {home / 'config.properties'}" in started.stdout
            addresses.append(inference_address(started.stdout))
        pids = [int(pid_file.read_text()) for pid_file in pid_files]
        assert pids[0] != pids[1] and all(psutil.pid_exists(pid) for pid in pids)
        stopped = run("modelserve", "--stop", cwd=homes[0])
        assert stopped.returncode == 0, stopped.stderr
        assert not psutil.pid_exists(pids[0]) and not pid_files[0].exists()
        assert call("GET", addresses[1] + "/ping").status == 200, "stopping one server leaves the other running"
        elsewhere = run("modelserve", "--stop", cwd=tmp_path)
        assert elsewhere.returncode != 0 and str(tmp_path / "logs" / "modelserve.pid") in elsewhere.stderr
        assert run("modelserve", "--stop", cwd=homes[1]).returncode == 0
        assert not psutil.pid_exists(pids[1])


def test_start_waits_for_startup_models_to_be_ready(tmp_path: Path, store: Path) -> None:
    make_archive(store, "slow", "slow_init_handler.py", config_yaml=ONE_WORKER + "handler:\n  init_s: 2\n")
    (tmp_path / "c.properties").write_text(PORT0_CONFIG)
    pid_file = tmp_path / "ms.pid"
    with stopped_at_exit(pid_file):
        started = run("modelserve", "--start", "--ts-config", "c.properties", "--model-store", str(store),
                      "--models", "slow.mar", "--ncs", "--pid-file", str(pid_file), cwd=tmp_path)  # fmt: skip
        assert started.returncode == 0, started.stderr
        assert "Model slow version 1.0: READY" in started.stdout
        # no waiting here: --start answered only once the model could serve
        assert call("POST", inference_address(started.stdout) + "/predictions/slow", b"hi").body == b"hi"
        assert run("modelserve", "--stop", "--pid-file", str(pid_file), cwd=tmp_path).returncode == 0


def test_start_fails_with_the_reason_when_a_startup_model_does_not_load(tmp_path: Path, store: Path) -> None:
    make_archive(store, "broken", "fail_init_handler.py", config_yaml=ONE_WORKER)
    make_archive(store, "echo", "echo_handler.py", config_yaml=ONE_WORKER)
    (tmp_path / "c.properties").write_text(PORT0_CONFIG + "max_model_load_failures=1\n")
    pid_file = tmp_path / "ms.pid"
    with stopped_at_exit(pid_file):
        started = run("modelserve", "--start", "--ts-config", "c.properties", "--model-store", str(store),
                      "--models", "broken.mar", "echo.mar", "missing.mar", "--ncs", "--pid-file", str(pid_file),
                      cwd=tmp_path)  # fmt: skip
        assert started.returncode == 3, (started.stdout, started.stderr)
        assert re.search(r"model broken version 1\.0 did not load: .*weights are corrupt", started.stderr)
        assert re.search(r"model missing\.mar did not load: .*not found", started.stderr), started.stderr
        assert "echo" not in started.stderr and "Traceback" not in started.stderr
        assert "Model broken version 1.0: FAILED" in started.stdout
        # the rest is served, as the message says
        assert call("POST", inference_address(started.stdout) + "/predictions/echo", b"hi").body == b"hi"
        assert run("modelserve", "--stop", "--pid-file", str(pid_file), cwd=tmp_path).returncode == 0
