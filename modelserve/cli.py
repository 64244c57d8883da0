"""``modelserve``: start (daemonized or in the foreground) and stop the server."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from modelserve import package_version
from modelserve.archive.cli import OneLineParser
from modelserve.config import ServerConfig, find_config_file, load_server_config
from modelserve.errors import ModelServeError
from modelserve.logs import configure_logging
from modelserve.server.lifecycle import Server, StartupFailure, StartupOptions, describe_startup

log = logging.getLogger("modelserve")

READY_MARK = "MODELSERVE-READY"
PID_FILE_NAME = "modelserve.pid"
# --start's exit status when the server runs but some start-up models did not load
EXIT_MODELS_FAILED = 3


@dataclass
class ReadyReport:
    """What the daemonized server tells ``--start`` once its start-up models have settled (loaded or failed)."""

    lines: list[str] = field(default_factory=list)
    failures: list[StartupFailure] = field(default_factory=list)

    def encode(self) -> str:
        return READY_MARK + json.dumps(dataclasses.asdict(self)) + "\n"

    @classmethod
    def decode(cls, text: str) -> ReadyReport | None:
        if not text.startswith(READY_MARK):
            return None
        data = json.loads(text[len(READY_MARK) :])
        return cls(lines=list(data["lines"]), failures=[StartupFailure(**f) for f in data["failures"]])


def default_pid_file(config: ServerConfig) -> Path:
    """The PID file lives with the server's log (``log_location``, by default ``logs/`` where it was started)."""
    return (Path(config.log_location) / PID_FILE_NAME).absolute()


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="modelserve", description="A multi-model inference server for .mar archives.")
    parser.add_argument("-v", "--version", action="version", version=f"modelserve {package_version()}")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--start", action="store_true", help="start the server (daemonized unless --foreground)")
    action.add_argument("--stop", action="store_true", help="stop the running server gracefully and wait")
    parser.add_argument("--foreground", action="store_true", help="stay attached (containers, supervisors)")
    parser.add_argument("--model-store", help="directory holding model archives")
    parser.add_argument(
        "--models",
        nargs="+",
        default=[],
        metavar="SPEC",
        help="name=file.mar, file.mar, a directory, or 'all'; several separated by spaces or commas",
    )
    parser.add_argument(
        "--ts-config",
        type=Path,
        help="config.properties file (TorchServe key names; default: "
        "$TS_CONFIG_FILE, else config.properties in the current directory if there is one)",
    )
    parser.add_argument("--log-config", type=Path, help="logging configuration (dictConfig YAML/JSON or .ini)")
    parser.add_argument(
        "--ncs",
        "--no-config-snapshots",
        dest="ncs",
        action="store_true",
        help="do not write or restore model snapshots",
    )
    parser.add_argument("--disable-token-auth", action="store_true", help="no bearer token on the management API")
    parser.add_argument("--enable-model-api", action="store_true", help="allow registering/unregistering over HTTP")
    parser.add_argument("--worker-backend", metavar="NAME", help="where workers run (worker_backend; default: local)")
    parser.add_argument(
        "--ray-address", metavar="ADDRESS", help="worker_backend=ray: auto or the head's host:port (ray_address)"
    )
    parser.add_argument(
        "--pid-file",
        type=Path,
        default=None,
        help=f"PID file (default: {PID_FILE_NAME} in the log directory, log_location)",
    )
    parser.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    return parser  # fmt: skip


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The configuration file ``args.ts_config`` (found by ``find_config_file``), the environment, then the flags."""
    overrides: dict[str, str] = {}
    if args.model_store:
        overrides["model_store"] = args.model_store
    if args.models:  # as in TorchServe, --models replaces load_models
        overrides["load_models"] = ",".join(args.models)
    if args.disable_token_auth:
        overrides["disable_token_authorization"] = "true"
    if args.enable_model_api:
        overrides["enable_model_api"] = "true"
    if args.ncs:
        overrides["model_snapshot"] = "false"
    if args.worker_backend:
        overrides["worker_backend"] = args.worker_backend
    if args.ray_address:
        overrides["ray_address"] = args.ray_address
    return load_server_config(args.ts_config, os.environ, overrides)


def _check_store(config: ServerConfig) -> None:
    if config.model_store and not Path(config.model_store).is_dir():
        raise ModelServeError(f"model store {config.model_store} is not a directory")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


async def _run(config: ServerConfig, args: argparse.Namespace) -> int:
    options = StartupOptions(
        token_auth=not config.disable_token_authorization,
        model_api=config.enable_model_api,
        snapshot=config.model_snapshot,
    )
    server = Server(config, options)
    try:
        addresses = await server.start()
    except (ModelServeError, OSError) as exc:
        await server.shutdown()
        raise ModelServeError(str(exc)) from None
    server.install_signal_handlers()
    loading = asyncio.create_task(server.load_startup_models())
    stopping = asyncio.create_task(server.stop_event.wait())
    await asyncio.wait({loading, stopping}, return_when=asyncio.FIRST_COMPLETED)
    gc.freeze()  # what start-up allocated stays: spare the collector from scanning it on the request path
    source = str(args.ts_config.absolute()) if args.ts_config is not None else "none (built-in defaults)"
    lines = [f"Configuration file: {source}", *describe_startup(addresses, config, server.state)]
    for line in lines:
        log.info("%s", line)
    if args.ready_fd is not None:
        report = ReadyReport(lines=lines, failures=list(server.startup_failures))
        with contextlib.suppress(OSError), os.fdopen(args.ready_fd, "w") as ready:
            ready.write(report.encode())
    await stopping
    if not loading.done():
        loading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loading
    server.remove_signal_handlers()
    await server.shutdown()
    return 0


def _install_event_loop_policy() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def run_foreground(args: argparse.Namespace, config: ServerConfig) -> int:
    if args.ready_fd is not None:
        # workers must not inherit the readiness pipe, or --start would wait for them to exit
        os.set_inheritable(args.ready_fd, False)
    configure_logging(config.log_level, config.log_format, args.log_config)
    pid_file = args.pid_file or default_pid_file(config)
    try:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()}\n")
    except OSError as exc:
        log.warning("cannot write the PID file %s (%s): 'modelserve --stop' will not find this server",
                    pid_file, exc.strerror or exc)  # fmt: skip
    _install_event_loop_policy()
    try:
        return asyncio.run(_run(config, args))
    except ModelServeError as exc:
        log.error("%s", exc)
        print(f"modelserve: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if _read_pid(pid_file) == os.getpid():
            pid_file.unlink(missing_ok=True)


def start_daemon(args: argparse.Namespace, config: ServerConfig, argv: list[str]) -> int:
    pid_file = args.pid_file or default_pid_file(config)
    running = _read_pid(pid_file)
    if running is not None and _pid_alive(running):
        print(f"modelserve: error: a server is already running (pid {running}, {pid_file}); "
              "stop it with 'modelserve --stop'", file=sys.stderr)  # fmt: skip
        return 1
    log_dir = Path(config.log_location)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / "modelserve.log"
    read_end, write_end = os.pipe()
    child_args = [a for a in argv if a != "--start"]
    if args.pid_file is None:
        child_args += ["--pid-file", str(pid_file)]
    if args.ts_config is not None:  # the file this process found, whatever the child's environment
        child_args += ["--ts-config", str(args.ts_config.absolute())]
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelserve.cli", "--start", "--foreground", *child_args,
             "--ready-fd", str(write_end)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            pass_fds=(write_end,), start_new_session=True,
        )  # fmt: skip
    os.close(write_end)
    with os.fdopen(read_end) as ready:
        report = ReadyReport.decode(ready.read())
    if report is not None:
        print("\n".join(report.lines))
        print(f"Logs: {log_path.resolve()}  PID: {process.pid}  (stop with 'modelserve --stop')")
        if not report.failures:
            return 0
        for failure in report.failures:
            print(f"modelserve: error: model {failure.model} did not load: {failure.reason}", file=sys.stderr)
        print(f"modelserve: the server is running (PID {process.pid}) without the model(s) above; see {log_path} "
              "for details, then register them again or stop the server with 'modelserve --stop'",
              file=sys.stderr)  # fmt: skip
        return EXIT_MODELS_FAILED
    code = process.wait()
    tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
    reason = next((line for line in reversed(tail) if "error" in line.lower()), tail[-1] if tail else "")
    print(f"modelserve: error: the server did not start (exit code {code}): {reason}", file=sys.stderr)
    return 1


def stop_server(args: argparse.Namespace, config: ServerConfig) -> int:
    pid_file = args.pid_file or default_pid_file(config)
    timeout_s = config.shutdown_timeout + 15
    pid = _read_pid(pid_file)
    if pid is None or not _pid_alive(pid):
        where = "stale PID file" if pid is not None else "no PID file"
        print(f"modelserve: no server is running ({where} at {pid_file}; run --stop in the directory the server "
              "was started in, with the same configuration, or give --pid-file)", file=sys.stderr)  # fmt: skip
        pid_file.unlink(missing_ok=True)
        return 1
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    if _pid_alive(pid):
        print(f"modelserve: error: server (pid {pid}) did not stop within {timeout_s:g} s", file=sys.stderr)
        return 1
    pid_file.unlink(missing_ok=True)
    print("modelserve stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        args.ts_config = find_config_file(args.ts_config, os.environ, Path.cwd())
        if args.stop:  # the start already warned about the configuration; stopping only needs where the PID file is
            logging.getLogger("modelserve.config").setLevel(logging.ERROR)
        config = config_from_args(args)
        if args.stop:
            return stop_server(args, config)
        _check_store(config)
    except ModelServeError as exc:
        print(f"modelserve: error: {exc}", file=sys.stderr)
        return 2
    if args.foreground or args.ready_fd is not None:
        return run_foreground(args, config)
    return start_daemon(args, config, argv)


if __name__ == "__main__":
    sys.exit(main())
