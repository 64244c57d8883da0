"""One worker as a Ray actor: the worker program of a local process, run in a thread of the actor's process.

The actor receives the version's files from the object store, unpacks and checks them with the archive reader, and
runs ``workers.main.serve`` on one end of a socket pair. Its methods relay frames over the other end:

- ``send(seq, frame)``: a frame for the worker (init, credit, cancel, shutdown); ``infer(seq, frame)`` writes a batch
  and returns its RESULT frame. The parent numbers what it sends; frames reach the worker in that order whatever
  order Ray runs the calls in.
- ``frames()``: a streaming generator of every other frame the worker sends (its first frame, stream pieces and
  ends), each numbered in the order the worker sent it, RESULT frames included in the count, so that the parent puts
  the two paths back in the worker's order.

Ray is imported only inside methods: this module is loaded by the actor's process on whichever node runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil

from modelserve.archive.reader import checked_root, unpack_trees
from modelserve.workers.protocol import LENGTH, MessageType

STAGING_PREFIX = "modelserve-ray-"
MODEL_TREE = "model"
PATH_TREE = "path"  # the version's python_path directories: path0, path1, ...
_READ_CHUNK = 1 << 20


def sweep_stale(parent: Path) -> None:
    """Remove the files of actors of this machine that were killed (their process is gone) before cleaning up."""
    for entry in parent.glob(f"{STAGING_PREFIX}[0-9]*"):
        pid_text = entry.name[len(STAGING_PREFIX) :].split("-", 1)[0]
        if pid_text.isdigit() and not psutil.pid_exists(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True)


class WorkerActor:
    """The actor's body (``ray.remote`` is applied by the backend); one worker of one model version."""

    def __init__(self, label: str, shipment: bytes) -> None:
        self.label = label
        logging.basicConfig(
            level=os.environ.get("MODELSERVE_WORKER_LOG_LEVEL", "INFO"),
            stream=sys.stderr,
            format=f"%(levelname)s [{label}] %(name)s: %(message)s",
        )
        logging.getLogger("python_multipart").setLevel(logging.ERROR)
        temp = Path(tempfile.gettempdir())
        sweep_stale(temp)
        self.staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=temp))
        try:
            bundle = self.staging / "shipment.zip"
            bundle.write_bytes(shipment)
            files = self.staging / "files"
            files.mkdir()
            unpack_trees(bundle, files)
            bundle.unlink()
            self.root = files / MODEL_TREE
            checked_root(self.root)
            paths = sorted(
                (p for p in files.iterdir() if p.name.startswith(PATH_TREE) and p.name[len(PATH_TREE) :].isdigit()),
                key=lambda p: int(p.name[len(PATH_TREE) :]),
            )
            self.python_path = [str(p) for p in paths]
        except BaseException:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise
        self._sock, worker_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._thread = threading.Thread(target=self._run, args=(worker_sock,), name="modelserve-worker", daemon=True)
        self._thread.start()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._next_write = 0
        self._held: dict[int, tuple[bytes, asyncio.Future[tuple[int, bytes]] | None]] = {}
        self._results: deque[asyncio.Future[tuple[int, bytes]]] = deque()
        self._out: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self._read_count = 0
        self._lock = asyncio.Lock()

    def _run(self, sock: socket.socket) -> None:
        from modelserve.workers.main import Channel, serve

        try:
            serve(Channel(sock))
        except (EOFError, ConnectionError):
            pass
        except Exception:
            logging.getLogger("modelserve.worker").exception("the worker stopped on an error")
        finally:
            sock.close()
            sys.stdout.flush()

    async def _ensure_started(self) -> None:
        async with self._lock:
            if self._writer is None:
                reader, self._writer = await asyncio.open_unix_connection(sock=self._sock, limit=_READ_CHUNK)
                self._reader_task = asyncio.create_task(self._read(reader))

    async def where(self) -> dict[str, Any]:
        """Where this worker runs and where its files are (the parent rewrites the init frame's paths)."""
        import ray

        await self._ensure_started()
        context = ray.get_runtime_context()
        return {
            "node_id": context.get_node_id(),
            "pid": os.getpid(),
            "model_dir": str(self.root),
            "python_path": self.python_path,
        }

    def usage(self) -> int:
        """Resident memory of the actor's process (the worker is a thread of it)."""
        return int(psutil.Process().memory_info().rss)

    async def _write(self, seq: int, frame: bytes, result: asyncio.Future[tuple[int, bytes]] | None) -> None:
        await self._ensure_started()
        assert self._writer is not None
        self._held[seq] = (frame, result)
        while self._next_write in self._held:
            data, waiting = self._held.pop(self._next_write)
            self._next_write += 1
            if waiting is not None:
                self._results.append(waiting)  # the worker answers batches in the order they reached it
            self._writer.write(data)
        await self._writer.drain()

    async def send(self, seq: int, frame: bytes) -> None:
        await self._write(seq, frame, None)

    async def infer(self, seq: int, frame: bytes) -> tuple[int, bytes]:
        result: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        await self._write(seq, frame, result)
        return await result

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                try:
                    head = await reader.readexactly(LENGTH.size)
                    (length,) = LENGTH.unpack(head)
                    frame = await reader.readexactly(length)
                except asyncio.IncompleteReadError:
                    return
                seq = self._read_count
                self._read_count += 1
                if frame and frame[0] == MessageType.RESULT and self._results:
                    waiting = self._results.popleft()
                    if not waiting.done():
                        waiting.set_result((seq, frame))
                else:
                    self._out.put_nowait((seq, frame))
        finally:
            self._out.put_nowait(None)
            gone = EOFError("the worker stopped")
            while self._results:
                waiting = self._results.popleft()
                if not waiting.done():
                    waiting.set_exception(gone)
            self._cleanup()

    def _cleanup(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._thread.join(timeout=5.0)
        shutil.rmtree(self.staging, ignore_errors=True)

    async def frames(self) -> AsyncIterator[list[tuple[int, bytes]]]:
        """Every frame of the worker that is not a RESULT, in order, as they come (several per item when queued);
        ends when the worker has stopped."""
        await self._ensure_started()
        while True:
            item = await self._out.get()
            batch: list[tuple[int, bytes]] = []
            ended = item is None
            if item is not None:
                batch.append(item)
            while not ended and not self._out.empty():
                more = self._out.get_nowait()
                if more is None:
                    ended = True
                else:
                    batch.append(more)
            if batch:
                yield batch
            if ended:
                with contextlib.suppress(Exception):
                    if self._reader_task is not None:
                        await self._reader_task
                return
