"""The model registry: names -> versions -> ModelVersion, with a default version per name."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelserve.archive.errors import ArchiveError
from modelserve.archive.reader import ArchiveLimits, ExtractedArchive
from modelserve.archive.signing import extract_verified
from modelserve.config import ModelConfig, ServerConfig, parse_model_yaml
from modelserve.errors import (
    ConfigError,
    ForbiddenError,
    InvalidRequestError,
    ModelAlreadyExistsError,
    ModelLoadError,
    ModelNotFoundError,
    VersionNotFoundError,
)
from modelserve.models.dependencies import install_requirements
from modelserve.models.store import ModelSource
from modelserve.models.version import ModelVersion
from modelserve.validation import check_handler, check_name
from modelserve.workers.backend import WorkerBackend, load_backend

log = logging.getLogger("modelserve.registry")


@dataclass
class RegisterOptions:
    """What a registration may override (management API query parameters, or a snapshot)."""

    model_name: str | None = None
    handler: str | None = None
    runtime: str | None = None
    initial_workers: int | None = None
    synchronous: bool = True
    config_overrides: dict[str, Any] = field(default_factory=dict)
    loaded_at_startup: bool = False


class ModelRegistry:
    def __init__(self, server: ServerConfig, work_dir: Path, backend: WorkerBackend | None = None) -> None:
        self.server = server
        self.work_dir = work_dir
        self.models: dict[str, dict[str, ModelVersion]] = {}
        self.defaults: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self.limits = ArchiveLimits(max_total_bytes=server.max_archive_size)
        self.backend = backend if backend is not None else load_backend(server.worker_backend, server)
        # start-up registrations run concurrently: until each is in the registry, the thread policy counts it with
        # the default worker count, so the first workers to start do not take every core for themselves
        self.startup_pending = 0

    # ---- lookup ---------------------------------------------------------------------------------------------
    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """``version`` of ``name`` (the default when None), with TorchServe's messages when there is none."""
        versions = self.models.get(name)
        if not versions:
            raise ModelNotFoundError(f"Model not found: {name}")
        if version is None:
            return versions[self.defaults[name]]
        found = versions.get(version)
        if found is None:
            raise VersionNotFoundError(f"Model version: {version} does not exist for model: {name}")
        return found

    def versions(self, name: str) -> list[ModelVersion]:
        versions = self.models.get(name)
        if not versions:
            raise ModelNotFoundError(f"model not found: {name}")
        return list(versions.values())

    def all_versions(self) -> list[ModelVersion]:
        return [v for versions in self.models.values() for v in versions.values()]

    def check_worker_cap(self, adding: int, label: str, replacing: ModelVersion | None = None) -> None:
        """Refuse (400) a change that would run more worker processes than ``max_workers_total`` allows."""
        running = sum(v.min_workers for v in self.all_versions() if v is not replacing)
        before = running + (replacing.min_workers if replacing is not None else 0)
        cap = self.server.worker_cap()
        if running + adding > max(cap, before):  # never refuses a change that runs fewer workers than before
            raise InvalidRequestError(
                f"{label} asks for {adding} workers; with the {running} already running that is {running + adding}, "
                f"more than max_workers_total={cap} (derived from this machine's cores and memory unless set in "
                "the configuration): ask for fewer workers, scale other models down, or raise max_workers_total"
            )

    def total_workers(self) -> int:
        registered = sum(v.min_workers for v in self.all_versions())
        return registered + self.startup_pending * max(1, self.server.default_workers_per_model)

    def thread_count(self, config: ModelConfig) -> int:
        """Intra-op threads per worker: explicit settings win; otherwise cores shared by all workers."""
        if config.intra_op_threads > 0:
            return config.intra_op_threads
        if self.server.intra_op_threads > 0:
            return self.server.intra_op_threads
        if "OMP_NUM_THREADS" in os.environ:
            return 0  # the operator chose; leave the environment as it is
        return max(1, self.backend.cores() // max(1, self.total_workers()))

    # ---- registration -------------------------------------------------------------------------------------------
    def _model_config(self, extracted: ExtractedArchive, options: RegisterOptions) -> ModelConfig:
        config = ModelConfig.defaults(self.server)
        if options.loaded_at_startup:  # then the models key of config.properties, below the archive's own file
            name = options.model_name or extracted.manifest.model_name
            config = self.server.model_defaults(name, extracted.manifest.model_version)
        config_file = extracted.manifest.config_file
        if config_file:
            source = f"{config_file} in the archive"
            config = config.updated(parse_model_yaml((extracted.root / config_file).read_bytes(), source), source)
        if options.config_overrides:
            config = config.updated(options.config_overrides, "registration parameters")
        if options.initial_workers is not None:
            config = config.updated({"minWorkers": options.initial_workers}, "initial_workers")
        return config

    async def register(self, source: ModelSource, options: RegisterOptions) -> ModelVersion:
        """Extract, configure and start a new version; raise typed errors. Synchronous: wait for its workers."""
        pending = [options.loaded_at_startup and self.startup_pending > 0]  # still counted as a pending start-up load
        try:
            return await self._register(source, options, pending)
        finally:
            if pending[0]:
                self.startup_pending = max(0, self.startup_pending - 1)

    async def _register(self, source: ModelSource, options: RegisterOptions, pending: list[bool]) -> ModelVersion:
        if options.runtime is not None and options.runtime not in ("python", "python3"):
            raise InvalidRequestError(f"unsupported runtime {options.runtime!r} (supported: python)")
        if options.model_name is not None:
            check_name(options.model_name)
        try:
            # the signature is checked here, on the extracted files, before any handler code can run
            extracted = await asyncio.to_thread(extract_verified, source.path, self.work_dir, self.limits, self.server)
        except ArchiveError as exc:
            raise InvalidRequestError(f"cannot load {source.url}: {exc}") from None
        try:
            # every path from here on removes what it made when it fails, whatever the error
            return await self._configure_and_start(source, options, pending, extracted)
        except BaseException:
            extracted.cleanup()
            raise

    async def _configure_and_start(
        self, source: ModelSource, options: RegisterOptions, pending: list[bool], extracted: ExtractedArchive
    ) -> ModelVersion:
        try:
            # off the event loop: the archive's YAML is untrusted (bounded by parse_model_yaml, still not free)
            config = await asyncio.to_thread(self._model_config, extracted, options)
            name = options.model_name or extracted.manifest.model_name
            version_name = extracted.manifest.model_version
            check_handler(options.handler or extracted.manifest.handler, extracted.root)
            if version_name in self.models.get(name, {}):  # checked again under the lock
                raise ModelAlreadyExistsError(f"model {name} version {version_name} is already registered")
            deps = await install_requirements(
                extracted, self.server.install_py_dep_per_model, f"model {name} version {version_name}"
            )
            async with self._lock:
                if version_name in self.models.get(name, {}):
                    raise ModelAlreadyExistsError(f"model {name} version {version_name} is already registered")
                self.check_worker_cap(config.min_workers, f"model {name} version {version_name}")
                version = ModelVersion(
                    name=name, version=version_name, url=source.url, extracted=extracted, config=config,
                    loaded_at_startup=options.loaded_at_startup,
                    max_load_failures=self.server.max_model_load_failures,
                    thread_count=self.thread_count, handler=options.handler, backend=self.backend,
                    python_path=[str(deps)] if deps is not None else [],
                )  # fmt: skip
                self.models.setdefault(name, {})[version_name] = version
                self.defaults.setdefault(name, version_name)
                if pending[0]:  # from now on its workers count as registered ones
                    self.startup_pending = max(0, self.startup_pending - 1)
                    pending[0] = False
        except ConfigError as exc:
            raise InvalidRequestError(str(exc)) from None
        log.info("registered %s version %s from %s (%d workers)", name, version_name, source.url, config.min_workers)
        try:
            await version.start(config.min_workers)
            if options.synchronous:
                try:
                    await version.wait_ready()
                except ModelLoadError as exc:
                    if options.loaded_at_startup:
                        # a startup model stays visible as FAILED, with its error in the description
                        log.error("model %s version %s FAILED: %s", name, version_name, exc)
                        return version
                    raise
        except BaseException:
            await self._remove(version)
            raise
        return version

    # ---- changes ------------------------------------------------------------------------------------------------
    async def _remove(self, version: ModelVersion) -> None:
        versions = self.models.get(version.name, {})
        versions.pop(version.version, None)
        if not versions:
            self.models.pop(version.name, None)
            self.defaults.pop(version.name, None)
        elif self.defaults.get(version.name) == version.version:
            self.defaults[version.name] = next(iter(versions))
        await version.unload(0)

    async def unregister(self, name: str, version_name: str | None) -> ModelVersion:
        version = self.get(name, version_name)
        versions = self.models[name]
        if len(versions) > 1 and self.defaults[name] == version.version:
            raise ForbiddenError(
                f"version {version.version} is the default of {name}; set another default before unregistering it"
            )
        versions.pop(version.version)
        if not versions:
            self.models.pop(name)
            self.defaults.pop(name)
        version.unloading = True
        await version.unload(max(version.config.response_timeout_s, 1.0))
        log.info("unregistered %s version %s", name, version.version)
        return version

    def set_default(self, name: str, version_name: str) -> None:
        self.get(name, version_name)
        self.defaults[name] = version_name

    async def scale(self, version: ModelVersion, min_workers: int, max_workers: int, synchronous: bool) -> None:
        if min_workers < 0 or max_workers < 0:
            raise InvalidRequestError("min_worker and max_worker must not be negative")
        if max_workers < min_workers:
            raise InvalidRequestError(f"max_worker ({max_workers}) must not be less than min_worker ({min_workers})")
        self.check_worker_cap(min_workers, f"scaling model {version.name} version {version.version}", version)
        await version.scale(min_workers, max_workers)
        if synchronous:
            await version.pool.wait_ready(version.config.startup_timeout_s)

    def list_page(self, limit: int, start: int) -> tuple[list[dict[str, str]], int | None]:
        names = sorted(self.models)
        page = names[start : start + limit]
        models = [{"modelName": n, "modelUrl": self.get(n).url} for n in page]
        following = start + limit if start + limit < len(names) else None
        return models, following

    async def stop_all(self, drain_timeout_s: float) -> None:
        versions = self.all_versions()
        for version in versions:
            version.unloading = True
        await asyncio.gather(*(v.unload(drain_timeout_s) for v in versions), return_exceptions=True)
        self.models.clear()
        self.defaults.clear()
        await self.backend.stop()

    # ---- snapshot -----------------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        models: dict[str, Any] = {}
        for name, versions in self.models.items():
            models[name] = {
                v.version: {
                    "url": v.url,
                    "defaultVersion": self.defaults.get(name) == v.version,
                    "minWorkers": v.min_workers,
                    "maxWorkers": v.max_workers,
                    "batchSize": v.config.batch_size if v.config.batch_size_explicit else None,
                    "maxBatchDelay": v.config.max_batch_delay_ms,
                    "responseTimeout": v.config.response_timeout_s,
                    "handler": v.handler if v.handler != v.extracted.manifest.handler else None,
                    "modelName": name,
                }
                for v in versions.values()
            }
        return {"modelCount": sum(len(v) for v in models.values()), "models": models}
