"""Server lifecycle: bind the three ports, load the startup models, serve, drain on SIGTERM, clean up."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from modelserve.config import ServerConfig, is_loopback, parse_address
from modelserve.errors import ModelServeError
from modelserve.models.registry import ModelRegistry, RegisterOptions
from modelserve.models.store import ModelStore
from modelserve.models.version import VersionState
from modelserve.server.auth import write_key_file
from modelserve.server.cors import cors_middleware
from modelserve.server.guard import (
    ConnectionGuard,
    Deadlines,
    GuardedSite,
    refuse_oversized_expectations,
)
from modelserve.server.inference import create_inference_app
from modelserve.server.management import create_management_app
from modelserve.server.metrics_app import create_metrics_app
from modelserve.server.state import ServerState
from modelserve.server.workdir import WorkDir, remove_stale

if TYPE_CHECKING:
    from modelserve.server.grpc_server import GrpcFront

log = logging.getLogger("modelserve.server")


@dataclass
class StartupOptions:
    """What the command line adds to the configuration."""

    models: list[str] = field(default_factory=list)
    token_auth: bool = True
    model_api: bool = False
    snapshot: bool = True


@dataclass(frozen=True)
class StartupFailure:
    """A model named for start-up that is not serving, and why."""

    model: str
    reason: str


@dataclass
class BoundAddresses:
    inference: str
    management: str
    metrics: str | None
    # host:port of the gRPC servers (None: gRPC is off)
    grpc_inference: str | None = None
    grpc_management: str | None = None


def parse_model_specs(specs: list[str], store: ModelStore) -> list[tuple[str | None, str]]:
    """``--models`` items -> (name override, url). Accepts name=file, file, a directory, ``all``."""
    result: list[tuple[str | None, str]] = []
    for spec in specs:
        for item in spec.replace(",", " ").split():
            if item == "all":
                result.extend((None, name) for name in store.list_archives())
                continue
            name, sep, url = item.partition("=")
            result.append((name, url) if sep else (None, item))
    return result


class Server:
    def __init__(self, config: ServerConfig, options: StartupOptions) -> None:
        self.config = config
        self.options = options
        remove_stale()  # what servers killed before they could clean up left behind (never a live server's)
        self._work = WorkDir()  # locked while this server lives
        self.work_dir = self._work.path
        store = ModelStore(Path(config.model_store) if config.model_store else None)
        snapshot_path = Path(config.log_location) / "config" / "snapshot.json" if options.snapshot else None
        self.state = ServerState(
            config=config,
            registry=ModelRegistry(config, self.work_dir),
            store=store,
            snapshot_path=snapshot_path,
            model_api_enabled=options.model_api,
        )
        self.runners: list[web.AppRunner] = []
        self.grpc: GrpcFront | None = None
        self.stop_event = asyncio.Event()
        self.startup_failures: list[StartupFailure] = []

    async def _serve_app(self, app: web.Application, address: str) -> str:
        host, port = parse_address(address)
        config = self.config
        deadlines = Deadlines(config.header_timeout, config.body_timeout, config.keep_alive_timeout)
        guard = ConnectionGuard(config.max_connections, deadlines)
        app.middlewares.insert(0, guard.middleware())
        if config.cors_allowed_origin:
            app.middlewares.insert(0, cors_middleware(config))
        refuse_oversized_expectations(app)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, max_line_size=8190,
                               max_field_size=8190, max_headers=100,
                               keepalive_timeout=config.keep_alive_timeout)  # fmt: skip
        await runner.setup()
        self.runners.append(runner)
        site = GuardedSite(runner, host, port, guard)
        try:
            await site.start()
        except OSError as exc:
            raise ModelServeError(f"cannot bind {address}: {exc.strerror or exc}") from None
        bound_port = runner.addresses[0][1] if runner.addresses else port
        shown_host = f"[{host}]" if ":" in host else host
        return f"http://{shown_host}:{bound_port}"

    async def start(self) -> BoundAddresses:
        config = self.config
        token: str | None = None
        if self.options.token_auth:
            token = write_key_file(Path(config.key_file))
        inference = await self._serve_app(create_inference_app(self.state), config.inference_address)
        management = await self._serve_app(create_management_app(self.state, token), config.management_address)
        metrics = None
        if config.enable_metrics_api:
            metrics = await self._serve_app(create_metrics_app(self.state), config.metrics_address)
        for address in (config.inference_address, config.management_address):
            host, _ = parse_address(address)
            if not is_loopback(host):
                log.warning("%s is reachable from other machines: put authentication in front of it", address)
        grpc_inference = grpc_management = None
        if config.grpc_enabled():
            # imported here: grpc and protobuf load only when gRPC is on
            from modelserve.server.grpc_server import GrpcFront

            self.grpc = GrpcFront(self.state, token)
            grpc_inference, grpc_management = await self.grpc.start()
        elif config.enable_grpc is None:
            log.info("gRPC is off: grpcio is not installed (pip install 'modelserve[grpc]' to serve it)")
        if token is not None:
            log.info("management API token written to %s", Path(config.key_file).resolve())
        return BoundAddresses(inference, management, metrics, grpc_inference, grpc_management)

    async def load_startup_models(self) -> None:
        """Restore the snapshot (if any), then load the models named on the command line, concurrently."""
        registry = self.state.registry
        store = self.state.store
        jobs: list[tuple[str | None, str, RegisterOptions]] = []
        restored_urls: set[str] = set()
        defaults: dict[str, str] = {}
        # a TorchServe model_snapshot given in the configuration replaces modelserve's own snapshot file
        snapshot = self.config.snapshot_to_restore or self.state.load_snapshot()
        if snapshot:
            for name, versions in (snapshot.get("models") or {}).items():
                for version, entry in versions.items():
                    keys = ("batchSize", "maxBatchDelay", "responseTimeout", "startupTimeout")
                    overrides = {k: entry[k] for k in keys if k in entry}
                    overrides["maxWorkers"] = entry.get("maxWorkers")
                    options = RegisterOptions(
                        model_name=name, handler=entry.get("handler"), initial_workers=entry.get("minWorkers"),
                        config_overrides=overrides, loaded_at_startup=True,
                    )  # fmt: skip
                    jobs.append((name, entry["url"], options))
                    restored_urls.add(entry["url"])
                    if entry.get("defaultVersion"):
                        defaults[name] = version
            source = (
                "model_snapshot in the configuration" if self.config.snapshot_to_restore else self.state.snapshot_path
            )
            log.info("restoring %d model versions from %s", len(jobs), source)
        for name, url in parse_model_specs(self.options.models + self.config.load_models, store):
            if url not in restored_urls:
                jobs.append((name, url, RegisterOptions(model_name=name, loaded_at_startup=True)))
                restored_urls.add(url)

        async def load(name: str | None, url: str, options: RegisterOptions) -> None:
            label = name or url
            self.state.pending_loads.add(label)
            try:
                version = await registry.register(store.resolve(url), options)
            except ModelServeError as exc:
                log.error("cannot load %s: %s", url, exc)
                self.startup_failures.append(StartupFailure(label, str(exc)))
            else:
                if version.state is VersionState.FAILED:
                    reason = version.pool.last_error or "its workers failed to start"
                    self.startup_failures.append(StartupFailure(f"{version.name} version {version.version}", reason))
            finally:
                self.state.pending_loads.discard(label)

        registry.startup_pending = len(jobs)
        try:
            await asyncio.gather(*(load(*job) for job in jobs))
        finally:
            registry.startup_pending = 0
        for name, versions in self.config.models.items():
            for version, settings in versions.items():
                if settings.default_version:
                    defaults.setdefault(name, version)
                if version not in registry.models.get(name, {}):
                    log.warning("models in the configuration: model %s version %s was not loaded at start-up; "
                                "its settings are unused", name, version)  # fmt: skip
        for name, version in defaults.items():
            with contextlib.suppress(ModelServeError):
                registry.set_default(name, version)
        self.state.save_snapshot()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop_event.set)

    def remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    async def shutdown(self) -> None:
        """Drain: readiness false and new requests 503; queued and in-flight requests finish; then stop."""
        log.info("shutting down: draining in-flight requests (up to %g s)", self.config.shutdown_timeout)
        self.state.save_snapshot()
        self.state.draining = True
        await self.state.registry.stop_all(self.config.shutdown_timeout)
        if self.grpc is not None:
            await self.grpc.stop()
            self.grpc = None
        for runner in reversed(self.runners):
            await runner.cleanup()
        self.runners.clear()
        self._work.remove()
        log.info("modelserve stopped")


def describe_startup(addresses: BoundAddresses, config: ServerConfig, state: ServerState) -> list[str]:
    lines = [
        f"Inference API bound to {addresses.inference}",
        f"Management API bound to {addresses.management}",
        f"Metrics API bound to {addresses.metrics}" if addresses.metrics else "Metrics API disabled",
        *(
            [
                f"gRPC Inference API bound to {addresses.grpc_inference}",
                f"gRPC Management API bound to {addresses.grpc_management}",
            ]
            if addresses.grpc_inference
            else ["gRPC API disabled"]
        ),
        f"Model store: {state.store.root or '(none)'}",
    ]
    for version in state.registry.all_versions():
        lines.append(f"Model {version.name} version {version.version}: {version.state.value}")
    return lines


def status_summary(state: ServerState) -> dict[str, Any]:
    return {v.name + ":" + v.version: v.state.value for v in state.registry.all_versions()}
