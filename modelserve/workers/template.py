"""A worker template: one single-threaded process that imports torch once and forks workers from itself.

``import torch`` costs seconds and hundreds of MB in every process that does it. The template pays that once; forked
workers share its pages (copy-on-write), so a server with many torch workers starts faster and uses far less memory
(PSS). The template is a separate program started by the parent (never a fork of the asyncio parent), imports with
``OMP_NUM_THREADS=1`` so that torch starts no thread, and refuses to fork if any thread exists anyway.

Protocol on the control socket (JSON lines; file descriptors travel with SCM_RIGHTS):
  template -> parent  {"ready": true} | {"ready": false, "error": "..."}
  parent -> template  {"env": {...}} + fds [worker socket, stdout, stderr]
  template -> parent  {"spawned": pid} | {"failed": "..."}
  template -> parent  {"exited": pid, "status": returncode}   (a negative status is the signal number)
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import logging
import os
import selectors
import signal
import socket
import sys
import traceback
from collections import deque
from collections.abc import Mapping

log = logging.getLogger("modelserve.template")

PRELOAD = ("numpy", "PIL.Image", "torch")
MAX_FDS = 3


def _thread_count() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _send_line(sock: socket.socket, payload: dict[str, object]) -> None:
    sock.sendall(json.dumps(payload).encode() + b"\n")


def _exit_status(status: int) -> int:
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _run_child(fds: list[int], env: dict[str, str], control: socket.socket, private_fds: tuple[int, ...]) -> None:
    """In the forked child: become a worker on the socket we were given."""
    control.close()
    signal.set_wakeup_fd(-1)
    for fd in private_fds:
        os.close(fd)
    worker_fd, out_fd, err_fd = fds
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.close(out_fd)
    os.close(err_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(env)
    code = 1
    try:
        from modelserve.workers import main as worker_main

        code = worker_main.main(["--fd", str(worker_fd)])
    except SystemExit as exc:  # sys.exit() in a handler: its status, as in a worker that is a program of its own
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        # os._exit below skips the interpreter's own report of an uncaught exception: print it, or the parent's log
        # has only the exit code
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reap(control: socket.socket, children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        _send_line(control, {"exited": pid, "status": _exit_status(status)})


def serve(control: socket.socket) -> int:
    """The template's loop: fork on request, report exits."""
    try:
        for module in PRELOAD:
            __import__(module)
    except ImportError as exc:
        _send_line(control, {"ready": False, "error": f"cannot preload {exc.name}"})
        return 1
    if _thread_count() != 1:
        _send_line(control, {"ready": False, "error": f"{_thread_count()} threads after preloading: not fork-safe"})
        return 1
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    _send_line(control, {"ready": True})
    children: set[int] = set()
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    buffer = b""
    while True:
        for key, _ in selector.select():
            if key.fd == wake_read:
                os.read(wake_read, 512)
                _reap(control, children)
                continue
            fds = array.array("i")
            try:
                data, ancillary, _, _ = control.recvmsg(65536, socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
            except InterruptedError:
                continue
            if not data:
                return 0  # the server went away
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
            buffer += data
            line, _, buffer = buffer.partition(b"\n")
            request = json.loads(line)
            received = list(fds)
            if len(received) != MAX_FDS:
                for fd in received:
                    os.close(fd)
                _send_line(control, {"failed": f"expected {MAX_FDS} descriptors, got {len(received)}"})
                continue
            pid = os.fork()
            if pid == 0:
                selector.close()
                _run_child(received, request["env"], control, (wake_read, wake_write))
            for fd in received:
                os.close(fd)
            children.add(pid)
            _send_line(control, {"spawned": pid})
        _reap(control, children)


def main() -> int:
    fd = int(sys.argv[sys.argv.index("--fd") + 1])
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=fd)
    try:
        return serve(control)
    except (ConnectionError, OSError):
        return 0


# ---- parent side --------------------------------------------------------------------------------------------------


class ForkedProcess:
    """A worker forked by the template: the subset of asyncio.subprocess.Process that LocalWorker uses."""

    def __init__(
        self, pid: int, template: WorkerTemplate, stdout: asyncio.StreamReader, stderr: asyncio.StreamReader
    ) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdout: asyncio.StreamReader | None = stdout
        self.stderr: asyncio.StreamReader | None = stderr
        self._exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._template = template

    def _set_exit(self, status: int) -> None:
        self.returncode = status
        if not self._exited.done():
            self._exited.set_result(status)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


class WorkerTemplate:
    """The parent's handle on the template process."""

    def __init__(self) -> None:
        self.process: asyncio.subprocess.Process | None = None
        self._sock: socket.socket | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._spawns: deque[asyncio.Future[int]] = deque()
        self._children: dict[int, ForkedProcess] = {}
        self._early_exits: dict[int, int] = {}
        self._abandoned: set[int] = set()  # forked for a spawn that was given up, killed, exit not yet reported
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.available = False

    async def start(self, env: Mapping[str, str], timeout_s: float = 120.0) -> bool:
        """Start the template; False (and a log line) when it cannot preload or is not fork-safe."""
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        template_env = {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "modelserve.workers.template", "--fd", str(child_sock.fileno()),
                pass_fds=(child_sock.fileno(),), stdin=asyncio.subprocess.DEVNULL, env=template_env,
            )  # fmt: skip
        finally:
            child_sock.close()
        self._sock = parent_sock
        self._reader, self._writer = await asyncio.open_unix_connection(sock=parent_sock)
        try:
            line = await asyncio.wait_for(self._reader.readline(), timeout_s)
            hello = json.loads(line) if line else {"ready": False, "error": "template exited"}
        except (TimeoutError, ValueError):
            hello = {"ready": False, "error": "no answer"}
        if not hello.get("ready"):
            log.warning("worker template unavailable (%s): workers start as separate programs", hello.get("error"))
            await self.stop()
            return False
        self._task = asyncio.create_task(self._read(), name="worker-template")
        self.available = True
        return True

    async def _read(self) -> None:
        assert self._reader is not None
        while True:
            line = await self._reader.readline()
            if not line:
                break
            message = json.loads(line)
            if "exited" in message:
                pid = int(message["exited"])
                child = self._children.pop(pid, None)
                if child is not None:
                    child._set_exit(int(message["status"]))
                elif pid in self._abandoned:
                    self._abandoned.discard(pid)
                else:
                    self._early_exits[pid] = int(message["status"])
            elif self._spawns:
                future = self._spawns.popleft()
                if not future.done():
                    if "spawned" in message:
                        future.set_result(int(message["spawned"]))
                    else:
                        future.set_exception(OSError(message.get("failed", "spawn failed")))
        self.available = False
        for future in self._spawns:
            if not future.done():
                future.set_exception(OSError("worker template exited"))
        for child in self._children.values():
            child._set_exit(-signal.SIGKILL)

    async def spawn(self, worker_fd: int, env: Mapping[str, str]) -> ForkedProcess:
        """Fork a worker that serves ``worker_fd``; raise OSError when the template cannot.

        Cancelled or timed out while the template forks, nothing stays behind: the pipes' read ends are closed, and
        the worker the template forks anyway is killed when its pid arrives.
        """
        if not self.available or self._sock is None:
            raise OSError("worker template is not running")
        loop = asyncio.get_running_loop()
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        readers: list[int] = [out_read, err_read]  # read ends not yet owned by a pipe transport
        future: asyncio.Future[int] | None = None
        try:
            try:
                async with self._lock:
                    future = loop.create_future()
                    self._spawns.append(future)
                    payload = json.dumps({"env": dict(env)}).encode() + b"\n"
                    fds = array.array("i", [worker_fd, out_write, err_write])
                    self._sock.sendmsg([payload], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
                    # shielded: a cancelled spawn still learns the pid, to kill what the template forked
                    pid = await asyncio.wait_for(asyncio.shield(future), 30)
            finally:
                os.close(out_write)
                os.close(err_write)
            stdout = await _pipe_reader(readers.pop(0))
            stderr = await _pipe_reader(readers.pop(0))
        except BaseException:
            for fd in readers:
                os.close(fd)
            if future is not None:
                future.add_done_callback(self._kill_abandoned)
            raise
        child = ForkedProcess(pid, self, stdout, stderr)
        if pid in self._early_exits:
            child._set_exit(self._early_exits.pop(pid))
        else:
            self._children[pid] = child
        return child

    def _kill_abandoned(self, future: asyncio.Future[int]) -> None:
        """A worker whose spawn was given up: kill it once forked, and forget its exit."""
        if future.cancelled() or future.exception() is not None:
            return
        pid = future.result()
        child = self._children.pop(pid, None)
        if child is not None:
            child.kill()
            return
        if self._early_exits.pop(pid, None) is not None:
            return
        self._abandoned.add(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    async def stop(self) -> None:
        self.available = False
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
            self._writer = None
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5)
            self._task = None
        if self.process is not None:
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


class _PipeReaderProtocol(asyncio.StreamReaderProtocol):
    def eof_received(self) -> bool:
        super().eof_received()
        # a pipe has no other direction: let the transport close at end of file (uvloop keeps a read pipe open
        # after EOF when the protocol asks to, holding its descriptor until garbage collection)
        return False


async def _pipe_reader(fd: int) -> asyncio.StreamReader:
    """A reader on the pipe's read end ``fd``, which it owns from now on (closed here if it cannot be read)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    pipe = os.fdopen(fd, "rb", buffering=0)
    try:
        await loop.connect_read_pipe(lambda: _PipeReaderProtocol(reader), pipe)
    except BaseException:
        pipe.close()
        raise
    return reader


if __name__ == "__main__":
    sys.exit(main())
