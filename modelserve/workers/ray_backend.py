"""The Ray worker backend: each worker is a Ray actor, placed on any node of a cluster.

Chosen with ``worker_backend=ray``; ``ray_address`` names an existing cluster (``auto`` or ``host:port``), empty
starts a Ray instance of this machine owned by the server (stopped with it). The parent stays what it is: the same
front ends, batcher, least-loaded dispatch, channel timeouts and supervision. Only the transport to a worker
changes: frames go to the actor as Ray calls (``ray_actor.py``), a batch's reply comes back as the call's result,
and stream frames come back on one streaming call per actor, which also tells the parent when the actor is gone.

A version's files (the archive as extracted and checked here, and its installed dependencies) are zipped once and
put in the object store by ``prepare``; the backend keeps the reference until ``release``, and each actor unpacks
them with the archive reader on its node.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelserve.archive.reader import pack_trees
from modelserve.errors import ConfigError, WorkerDiedError, WorkerLoadError
from modelserve.workers.backend import WorkerEvents, WorkerSpec, WorkerUsage
from modelserve.workers.frames import FrameRouter, await_ready
from modelserve.workers.protocol import (
    CancelMessage,
    CreditMessage,
    InferMessage,
    InitMessage,
    Message,
    ShutdownMessage,
    encode,
)
from modelserve.workers.ray_actor import MODEL_TREE, PATH_TREE, WorkerActor
from modelserve.workers.ray_env import connect_ray, set_defaults, start_local_ray
from modelserve.workers.ray_env import shutdown as shutdown_ray

set_defaults()  # before Ray is imported: it reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER then

import ray  # noqa: E402
from ray.exceptions import ActorUnavailableError, RayError  # noqa: E402

if TYPE_CHECKING:
    from modelserve.config import ServerConfig

log = logging.getLogger("modelserve.worker")

# a frame larger than this goes to the actor through the object store (ray.put), smaller ones inline in the call
INLINE_FRAME_BYTES = 512 << 10
USAGE_INTERVAL_S = 2.0
MAX_CAUSE_CHARS = 400


def death_cause(exc: BaseException) -> str:
    """Ray's words on why an actor or call failed, on one line: the reason and the exit detail, without the list of
    possible root causes Ray appends."""
    text = " ".join(str(exc).split())
    exit_type = re.search(r"Worker exit type: (\S+)", text)
    detail = re.search(
        r"Worker exit detail: (.*?)(?: There are some potential root causes| Some common causes include|$)", text
    )
    for marker in ("The actor died because", "The actor is dead because", "because"):
        at = text.find(marker)
        if at >= 0:
            text = text[at:]
            break
    reason = text.split(". ", 1)[0].rstrip(".")
    node = re.search(r"Node Id: ([0-9a-f]+)", text)
    if node:
        reason += f" (node {node.group(1)})"
    if exit_type or detail:
        parts = [exit_type.group(1) if exit_type else "", detail.group(1).strip() if detail else ""]
        reason += " (" + ": ".join(p for p in parts if p) + ")"
    return reason[:MAX_CAUSE_CHARS]


class RayWorker:
    """A worker that is a Ray actor (a ``WorkerHandle``)."""

    def __init__(self, backend: RayBackend, spec: WorkerSpec, worker_id: str, log_prefix: str, threads: int) -> None:
        self.worker_id = worker_id
        self.log_prefix = log_prefix
        self.start_time = time.time()
        self.signature: dict[str, Any] = {}
        self.batch_size = 0
        self._backend = backend
        self._spec = spec
        self._threads = threads
        self._actor: Any = None
        self._router = FrameRouter(self._broken)
        self._exit: asyncio.Future[str] | None = None
        self._sent = 0  # frames numbered for the actor
        self._next_in = 0  # the worker's next frame, in the order it sent them
        self._held_in: dict[int, bytes] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._node: str | None = None
        self._address: str | None = None
        self._pid: int | None = None
        self._memory = 0

    # ---- state ------------------------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        return self._actor is not None and self._exit is not None and not self._exit.done()

    @property
    def node(self) -> str | None:
        return self._node

    def usage(self) -> WorkerUsage:
        return WorkerUsage(memory_bytes=self._memory, pid=self._pid, node=self._node, address=self._address)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- start ------------------------------------------------------------------------------------------------
    async def start(self, init: InitMessage, startup_timeout_s: float, events: WorkerEvents) -> None:
        loop = asyncio.get_running_loop()
        self._router.events = events
        self._exit = loop.create_future()
        deadline = loop.time() + startup_timeout_s
        backend = self._backend
        try:
            self._actor = backend.new_actor(self._spec, self.worker_id, self._threads)
            info = await asyncio.wait_for(_awaitable(self._actor.where.remote()), startup_timeout_s)
        except TimeoutError:
            await self.kill()
            raise WorkerLoadError(
                f"no Ray node took the worker within {startup_timeout_s:g} s: it asks for "
                f"{backend.describe_needs(self._spec)}; the cluster has {backend.describe_free()} free"
            ) from None
        except RayError as exc:
            await self.kill()
            raise WorkerLoadError(f"the worker's Ray actor did not start: {death_cause(exc)}") from None
        self._node = str(info["node_id"])
        self._address = backend.node_address(self._node)
        self._pid = int(info["pid"])
        self._spawn(self._pump(self._actor.frames.remote()))
        first = self._router.expect_first()
        self._send(
            dataclasses.replace(
                init,
                model_dir=str(info["model_dir"]),
                python_path=[*info["python_path"]],
                intra_op_threads=backend.threads_for(self._spec, self._threads),
            )
        )
        remaining = max(0.0, deadline - loop.time())
        ready = await await_ready(first, remaining, startup_timeout_s, self.kill)
        self.signature = ready.signature
        self.batch_size = ready.batch_size
        self._spawn(self._watch_usage())

    # ---- frames -----------------------------------------------------------------------------------------------
    def _payload(self, message: Message) -> Any:
        frame = b"".join(encode(message))
        return ray.put(frame) if len(frame) > INLINE_FRAME_BYTES else frame

    def _send(self, message: Message) -> None:
        if self._actor is None or self._exit is None or self._exit.done():
            raise WorkerDiedError("worker connection closed")
        seq = self._sent
        self._sent += 1
        self._actor.send.remote(seq, self._payload(message))

    def send(self, message: InferMessage) -> None:
        if not self.alive:
            raise WorkerDiedError("worker connection closed")
        seq = self._sent
        self._sent += 1
        reply = self._actor.infer.remote(seq, self._payload(message))
        self._spawn(self._await_reply(message.batch_id, reply))

    def send_control(self, message: CreditMessage | CancelMessage) -> None:
        self._send(message)

    async def _await_reply(self, batch_id: int, reply: Any) -> None:
        try:
            seq, frame = await reply
        except ActorUnavailableError as exc:
            # the call was refused before the actor ran it: the batch never reached the worker
            self._gone(f"Ray actor unavailable ({death_cause(exc)})", frozenset({batch_id}))
            self._kill_soon()
            return
        except RayError as exc:
            self._gone(f"Ray actor died ({death_cause(exc)})")
            return
        self._incoming(seq, frame)

    def _incoming(self, seq: int, frame: bytes) -> None:
        """A frame of the worker, by its number: handed on in the order the worker sent them."""
        self._held_in[seq] = frame
        while self._next_in in self._held_in:
            ready = self._held_in.pop(self._next_in)
            self._next_in += 1
            self._router.on_frame(ready)

    async def _pump(self, frames: Any) -> None:
        """Read the actor's stream of frames until it ends (the worker stopped) or fails (the actor is gone)."""
        try:
            async for item in frames:
                for seq, frame in await item:
                    self._incoming(seq, frame)
        except RayError as exc:
            self._gone(f"Ray actor died ({death_cause(exc)})")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._gone(f"Ray actor stream failed ({type(exc).__name__}: {exc})")
        else:
            self._gone("worker exited")

    def _gone(self, reason: str, unstarted: frozenset[int] = frozenset()) -> None:
        if self._exit is not None and not self._exit.done():
            self._exit.set_result(reason)
        self._router.lost(WorkerDiedError(reason, unstarted))

    def _broken(self, reason: str) -> None:
        self._gone(reason)
        self._kill_soon()

    def _kill_soon(self) -> None:
        self._spawn(self.kill())

    async def _watch_usage(self) -> None:
        while self.alive:
            with contextlib.suppress(RayError):
                self._memory = int(await self._actor.usage.remote())
            await asyncio.sleep(USAGE_INTERVAL_S)

    # ---- end --------------------------------------------------------------------------------------------------
    async def wait_exit(self) -> str:
        assert self._exit is not None
        return await asyncio.shield(self._exit)

    async def stop(self, grace_s: float = 5.0) -> None:
        if self.alive:
            with contextlib.suppress(WorkerDiedError, RayError):
                self._send(ShutdownMessage())
            assert self._exit is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exit), grace_s)
        await self.kill()

    async def kill(self) -> None:
        actor, self._actor = self._actor, None
        if actor is not None:
            with contextlib.suppress(RayError, ValueError):
                ray.kill(actor, no_restart=True)
        self._gone("worker connection closed")
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()


def _awaitable(ref: Any) -> Any:
    async def wait() -> Any:
        return await ref

    return wait()


@dataclasses.dataclass
class _Shipment:
    ref: Any  # the ObjectRef of the version's zipped files, kept for the version's life
    size: int


class RayBackend:
    """Workers as Ray actors on the nodes of a cluster (``WorkerBackend``)."""

    name = "ray"

    def __init__(self, config: ServerConfig) -> None:
        self._config = config
        self._connected = False
        self._owned = False
        self._lock: asyncio.Lock | None = None
        self._shipments: dict[str, _Shipment] = {}
        self._actor_class: Any = None
        self._cores = 0
        self._node_addresses: dict[str, str] = {}
        # Ray's files of this server (bootstrap file; an owned instance's session), removed when it stops
        self._work_dir = Path(tempfile.gettempdir()) / f"modelserve-ray-driver-{os.getpid()}"

    # ---- the cluster ------------------------------------------------------------------------------------------
    async def _connect(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._connected:
                return
            config = self._config
            work_dir = self._work_dir
            saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
            try:
                # in the event loop's thread: Ray installs signal handlers when it starts a node, which Python
                # allows in the main thread only; the server's own handlers are put back right after
                if config.ray_address:
                    connect_ray(config.ray_address, work_dir)
                else:
                    start_local_ray(
                        work_dir,
                        num_cpus=config.ray_num_cpus or None,
                        object_store_memory=config.ray_object_store_memory or None,
                    )
                    self._owned = True
            except ConfigError:
                raise
            except Exception as exc:
                where = config.ray_address or "a local Ray instance"
                raise WorkerLoadError(f"cannot connect to Ray ({where}): {type(exc).__name__}: {exc}") from None
            finally:
                for sig, handler in saved.items():
                    with contextlib.suppress(ValueError, TypeError):
                        signal.signal(sig, handler)
            self._actor_class = ray.remote(WorkerActor)
            self._cores = int(ray.cluster_resources().get("CPU", 1))  # type: ignore[no-untyped-call]
            self._connected = True
            log.info("Ray backend connected: %s", self.describe_free())

    def cores(self) -> int:
        if self._cores:
            return self._cores
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    def describe_free(self) -> str:
        try:
            free = ray.available_resources()  # type: ignore[no-untyped-call]
        except Exception:
            return "unknown resources"
        shown = {k: v for k, v in sorted(free.items()) if not k.startswith("node:") and "memory" not in k}
        return ", ".join(f"{k}={v:g}" for k, v in shown.items()) or "nothing"

    def node_address(self, node_id: str) -> str | None:
        """The address a node of the cluster was started with (looked up once per node)."""
        if node_id not in self._node_addresses:
            with contextlib.suppress(Exception):
                for node in ray.nodes():  # type: ignore[no-untyped-call]
                    self._node_addresses[str(node["NodeID"])] = str(node["NodeManagerAddress"])
        return self._node_addresses.get(node_id)

    def describe_needs(self, spec: WorkerSpec) -> str:
        needs = {"CPU": spec.num_cpus, **({"GPU": spec.num_gpus} if spec.num_gpus else {}), **spec.resources}
        return ", ".join(f"{k}={v:g}" for k, v in needs.items())

    # ---- versions ---------------------------------------------------------------------------------------------
    async def prepare(self, spec: WorkerSpec) -> None:
        await self._connect()
        if spec.label in self._shipments:
            return
        trees = {MODEL_TREE: spec.model_dir, **{f"{PATH_TREE}{i}": p for i, p in enumerate(spec.python_path)}}
        shipment = await asyncio.to_thread(_pack, trees)
        self._shipments[spec.label] = _Shipment(ray.put(shipment), len(shipment))
        log.info("%s: %d bytes of files in the Ray object store", spec.label, len(shipment))

    def threads_for(self, spec: WorkerSpec, threads: int) -> int:
        """Intra-op threads of an actor: an explicit setting, else its num_cpus (at least 1)."""
        if spec.intra_op_threads > 0:
            return spec.intra_op_threads
        return max(1, int(spec.num_cpus))

    def new_actor(self, spec: WorkerSpec, worker_id: str, threads: int) -> Any:
        shipment = self._shipments.get(spec.label)
        if shipment is None or self._actor_class is None:
            raise WorkerLoadError(f"{spec.label}: the Ray backend was not prepared for this version")
        count = str(self.threads_for(spec, threads))
        env = {"OMP_NUM_THREADS": count, "MKL_NUM_THREADS": count, "OPENBLAS_NUM_THREADS": count}
        env["PYTHONUNBUFFERED"] = "1"
        options: dict[str, Any] = {
            "num_cpus": spec.num_cpus,
            "num_gpus": spec.num_gpus,
            "resources": dict(spec.resources),
            "scheduling_strategy": "SPREAD",
            "max_restarts": 0,
            "max_task_retries": 0,
            "runtime_env": {"env_vars": env},
            "name": None,
        }
        return self._actor_class.options(**options).remote(spec.label, shipment.ref)

    def create(self, spec: WorkerSpec, worker_id: str, log_prefix: str, threads: int) -> RayWorker:
        return RayWorker(self, spec, worker_id, log_prefix, threads)

    async def release(self, spec: WorkerSpec) -> None:
        self._shipments.pop(spec.label, None)  # the object store frees the files once no actor holds them

    async def stop(self) -> None:
        self._shipments.clear()
        if self._connected:
            self._connected = False
            await asyncio.to_thread(shutdown_ray)
        await asyncio.to_thread(shutil.rmtree, self._work_dir, True)


def _pack(trees: dict[str, Path]) -> bytes:
    with tempfile.TemporaryDirectory(prefix="modelserve-ship-") as scratch:
        target = Path(scratch) / "shipment.zip"
        pack_trees(trees, target)
        return target.read_bytes()
