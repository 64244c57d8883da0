"""Server configuration and per-model configuration.

Precedence, lowest to highest: built-in defaults, ``config.properties`` (``--ts-config``, else ``$TS_CONFIG_FILE``,
else ``config.properties`` in the current directory), environment variables ``MODELSERVE_<KEY>`` (e.g.
``MODELSERVE_JOB_QUEUE_SIZE=50``), command-line flags. Per model: server defaults, then the ``models`` key (for versions
loaded at start-up), then the archive's ``model-config.yaml``, then parameters given at registration.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from modelserve.booleans import SYNONYMS, parse_bool
from modelserve.errors import ConfigError
from modelserve.model_settings import ModelTable, parse_models, parse_snapshot, snapshot_entries
from modelserve.properties import parse_properties
from modelserve.validation import (
    MAX_BATCH_DELAY_MS,
    MAX_BATCH_SIZE,
    MAX_JOB_QUEUE_SIZE,
    MAX_THREADS,
    MAX_TIMEOUT_S,
    MAX_WORKERS,
    parse_float,
    parse_int,
    parse_memory,
)

log = logging.getLogger("modelserve.config")

ENV_PREFIX = "MODELSERVE_"
CONFIG_FILE_NAME = "config.properties"
CONFIG_FILE_ENV = "TS_CONFIG_FILE"

# TorchServe keys that modelserve accepts and does not need; they are reported, not treated as unknown
IGNORED_TORCHSERVE_KEYS = frozenset({
    "number_of_netty_threads", "netty_client_threads", "vmargs", "number_of_gpu", "async_logging",
    "default_service_handler", "enable_envvars_config", "metrics_format", "workflow_store",
    "use_native_io", "io_ratio", "prefer_direct_buffer", "metrics_config", "enable_metrics_api_plugin",
    "plugins_path", "disable_system_metrics", "model_server_home", "ts_log_level",
    # written by TorchServe into its snapshot files, next to the settings
    "python", "tsConfigFile", "version",
})  # fmt: skip

# ServerConfig fields that no key of their own sets (filled from another key's value)
DERIVED_SETTINGS = frozenset({"snapshot_to_restore"})


def _bool(value: str) -> bool:
    return parse_bool(value, SYNONYMS)


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        return parse_int(value, "", minimum, 2**62)

    return parse


def _float_at_least(minimum: float) -> Callable[[str], float]:
    def parse(value: str) -> float:
        return parse_float(value, "", minimum, 1e15)

    return parse


def _list(value: str) -> list[str]:
    return [item.strip() for item in value.replace(" ", ",").split(",") if item.strip()]


def _address(value: str) -> str:
    parse_address(value)
    return value.strip()


def _grpc_host(value: str) -> str:
    """TorchServe's gRPC address keys name a host (an IP address or a name), not a URL: ``127.0.0.1``, ``::1``."""
    host = value.strip().strip("[]")
    if not host or any(c.isspace() or c in "/@?#" for c in host) or "://" in value:
        raise ValueError(f"expected a host name or IP address such as 127.0.0.1, got {value!r}")
    return host


def _port(value: str) -> int:
    return parse_int(value, "", 0, 65535)


def _optional_bool(value: str) -> bool | None:
    return None if not value.strip() else _bool(value)


def grpc_available() -> bool:
    """Whether grpcio and protobuf can be imported (looked up without importing them: the parent stays light)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("grpc", "google.protobuf", "google.rpc"))


def _choice(value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def setting_names() -> set[str]:
    """Every ServerConfig field: the configuration keys, plus the fields another key fills."""
    return set(_PARSERS) | DERIVED_SETTINGS


def _model_specs(value: str) -> list[str]:
    # TorchServe compares "all" without regard to case
    return ["all" if item.lower() == "all" else item for item in _list(value)]


SERVICE_ENVELOPES = ("", "body", "json", "kserve", "kservev2")


def _metrics_mode(value: str) -> str:
    # TorchServe ignores blanks and case here
    return _choice("".join(value.split()).lower(), ("log", "prometheus"))


def _optional_str(value: str) -> str | None:
    return value.strip() or None


def parse_address(value: str) -> tuple[str, int]:
    """``http://host:port`` -> (host, port). Only plain HTTP is supported (put TLS in a proxy in front)."""
    parts = urlsplit(value.strip())
    if parts.scheme != "http":
        raise ValueError(f"address {value!r} must look like http://HOST:PORT (https is not supported; use a proxy)")
    if not parts.hostname:
        raise ValueError(f"address {value!r} has no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"address {value!r} has an invalid port") from None
    if port is None:
        raise ValueError(f"address {value!r} has no port")
    return parts.hostname, port


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 4))


# the default cap oversubscribes the cores generously: a TorchServe-style store of many small models, each with the
# default worker count, must fit; a runaway scale (min_worker=200) must not
WORKERS_PER_CORE = 32
# the least memory a worker process takes (a Python interpreter with modelserve and numpy), for the default cap
MIN_WORKER_MEMORY_BYTES = 128 << 20


def default_max_workers_total() -> int:
    """The default cap on worker processes: 32 per core, no more than the machine's memory can hold."""
    import psutil

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    by_memory = psutil.virtual_memory().total // MIN_WORKER_MEMORY_BYTES
    return max(1, min(WORKERS_PER_CORE * cores, by_memory))


@dataclass
class ServerConfig:
    """Every server setting, with TorchServe's key names."""

    inference_address: str = "http://127.0.0.1:8080"
    management_address: str = "http://127.0.0.1:8081"
    metrics_address: str = "http://127.0.0.1:8082"
    model_store: str | None = None
    load_models: list[str] = field(default_factory=list)
    default_workers_per_model: int = field(default_factory=default_workers)
    job_queue_size: int = 100
    max_request_size: int = 6553500
    max_response_size: int = 6553500
    default_response_timeout: float = 120.0
    default_startup_timeout: float = 120.0
    # None: not set, so each model's batch size is 1 unless its handler declares one (built-in handlers do)
    batch_size: int | None = None
    max_batch_delay: float = 100.0
    enable_model_api: bool = False
    allowed_urls: list[str] = field(default_factory=list)
    disable_token_authorization: bool = False
    enable_metrics_api: bool = True
    cors_allowed_origin: str | None = None
    cors_allowed_methods: str | None = None
    cors_allowed_headers: str | None = None
    install_py_dep_per_model: bool = False
    model_snapshot: bool = True
    # a TorchServe model_snapshot JSON given in the configuration, as modelserve's own snapshot data
    snapshot_to_restore: dict[str, Any] | None = None
    models: ModelTable = field(default_factory=dict)
    metrics_mode: str = "prometheus"
    # a TorchServe request envelope around every handler (ts.torch_handler.request_envelope.<name>); empty: none
    service_envelope: str = ""
    log_location: str = "logs"
    key_file: str = "key_file.json"
    intra_op_threads: int = 0
    shutdown_timeout: float = 60.0
    max_connections: int = 1024
    header_timeout: float = 10.0
    # a request body must arrive in full within this many seconds (else 408); idle keep-alive connections close after
    body_timeout: float = 60.0
    keep_alive_timeout: float = 15.0
    max_model_load_failures: int = 3
    # worker processes of all models together; 0: derived from cores and memory (default_max_workers_total)
    max_workers_total: int = 0
    url_download_timeout: float = 60.0
    url_connect_timeout: float = 10.0
    url_idle_timeout: float = 30.0
    max_archive_size: int = 16 << 30
    # public keys (OpenSSH or PEM files, comma-separated) whose archive signatures are trusted
    trusted_archive_keys: list[str] = field(default_factory=list)
    require_signed_archives: bool = False
    use_worker_template: bool = True
    # where workers run: a name of modelserve.workers.backend.BACKENDS ("local": processes of this machine)
    worker_backend: str = "local"
    # worker_backend=ray: the cluster ("auto" or the head's host:port; empty: a Ray instance of this machine owned by
    # the server), and for an owned instance its CPUs (0: the machine's) and object store size (0: Ray's default)
    ray_address: str = ""
    ray_num_cpus: int = 0
    ray_object_store_memory: int = 0
    log_level: str = "INFO"
    log_format: str = "plain"
    # gRPC (TorchServe's keys, and enable_grpc of modelserve's own): None means on when grpcio is installed
    enable_grpc: bool | None = None
    grpc_inference_address: str = "127.0.0.1"
    grpc_inference_port: int = 7070
    grpc_management_address: str = "127.0.0.1"
    grpc_management_port: int = 7071
    # 0: no limit (TorchServe's default, Long.MAX_VALUE)
    grpc_inference_max_connection_age_ms: int = 0
    grpc_inference_max_connection_age_grace_ms: int = 0
    grpc_management_max_connection_age_ms: int = 0
    grpc_management_max_connection_age_grace_ms: int = 0
    enable_grpc_ssl: bool = False
    # calls in progress at once on each gRPC server (a stream counts as one); one more is refused (RESOURCE_EXHAUSTED)
    grpc_max_concurrent_streams: int = 1000

    def grpc_enabled(self) -> bool:
        """gRPC serves unless enable_grpc=false; with the key unset, only when grpcio is installed."""
        return grpc_available() if self.enable_grpc is None else self.enable_grpc

    def apply(self, values: Mapping[str, str], source: str) -> None:
        """Set fields from string values; unknown keys are warned about, invalid values raise ConfigError."""
        for key, raw in values.items():
            try:
                if key == "model_snapshot" and raw.lstrip().startswith("{"):
                    # TorchServe's form: the snapshot itself, as JSON; modelserve's own snapshots stay as they are
                    self.snapshot_to_restore = snapshot_entries(parse_snapshot(raw))
                    continue
                parser = _PARSERS.get(key)
                if parser is None:
                    _warn_unused(key, raw, source)
                    continue
                setattr(self, key, parser(raw))
            except ValueError as exc:
                raise ConfigError(f"{source}: invalid value for {key}: {exc}") from None

    def check(self) -> None:
        """Cross-field rules."""
        for key in ("inference_address", "management_address", "metrics_address"):
            parse_address(getattr(self, key))
        host, _ = parse_address(self.management_address)
        if self.disable_token_authorization and not is_loopback(host):
            raise ConfigError(
                f"refusing to serve the management API on non-loopback address {host} with token authorization "
                "disabled: enable tokens or bind management_address to 127.0.0.1"
            )
        if self.enable_grpc_ssl and self.enable_grpc is not False:
            raise ConfigError(
                "enable_grpc_ssl=true: modelserve's gRPC server speaks plaintext only; put TLS in a proxy in front "
                "of grpc_inference_port and grpc_management_port, or set enable_grpc=false"
            )
        if self.enable_grpc and not grpc_available():
            raise ConfigError("enable_grpc=true, but grpcio is not installed: pip install 'modelserve[grpc]'")
        grpc_host = self.grpc_management_address
        if self.grpc_enabled() and self.disable_token_authorization and not is_loopback(grpc_host):
            raise ConfigError(
                f"refusing to serve the gRPC management API on non-loopback address {grpc_host} with token "
                "authorization disabled: enable tokens or bind grpc_management_address to 127.0.0.1"
            )
        if self.max_request_size < 1 or self.max_response_size < 1:
            raise ConfigError("max_request_size and max_response_size must be positive")
        if self.trusted_archive_keys or self.require_signed_archives:
            from modelserve.archive.signing import SignaturePolicy, SigningKeyError

            try:  # every key file is read now, so that a bad one stops the start instead of each registration
                SignaturePolicy.from_key_files(self.trusted_archive_keys, self.require_signed_archives)
            except SigningKeyError as exc:
                raise ConfigError(f"trusted_archive_keys: {exc}") from None
        if self.metrics_mode == "log":
            log.warning(
                "metrics_mode=log: modelserve does not write metrics to log files; it always serves them in "
                "Prometheus text format at GET /metrics on metrics_address (%s)",
                self.metrics_address if self.enable_metrics_api else "disabled here by enable_metrics_api=false",
            )

    def worker_cap(self) -> int:
        """How many worker processes all models may run together (``max_workers_total``, else the derived cap)."""
        return self.max_workers_total or default_max_workers_total()

    def model_defaults(self, name: str, version: str) -> ModelConfig:
        """A start-up version's settings before its model-config.yaml: the server defaults, then the ``models`` key."""
        config = ModelConfig.defaults(self)
        settings = self.models.get(name, {}).get(version)
        if settings is None or not settings.values:
            return config
        updated = config.updated(settings.values, f"models in the configuration (model {name} version {version})")
        # these are not the archive's model-config.yaml, which is what the handler sees
        return dataclasses.replace(updated, raw={})


def _warn_unused(key: str, raw: str, source: str) -> None:
    if key in IGNORED_TORCHSERVE_KEYS:
        log.warning("%s: TorchServe key %r is not used by modelserve; ignored", source, key)
    else:
        log.warning("%s: unknown configuration key %r ignored", source, key)


_PARSERS: dict[str, Callable[[str], Any]] = {
    "inference_address": _address,
    "management_address": _address,
    "metrics_address": _address,
    "model_store": _optional_str,
    "load_models": _model_specs,
    "default_workers_per_model": _int_at_least(0),
    "job_queue_size": _int_at_least(1),
    "max_request_size": _int_at_least(1),
    "max_response_size": _int_at_least(1),
    "default_response_timeout": _float_at_least(0.001),
    "default_startup_timeout": _float_at_least(0.001),
    "batch_size": _int_at_least(1),
    "max_batch_delay": _float_at_least(0),
    "enable_model_api": _bool,
    "allowed_urls": lambda v: [u.strip() for u in v.split(",") if u.strip()],
    "disable_token_authorization": _bool,
    "enable_metrics_api": _bool,
    "cors_allowed_origin": _optional_str,
    "cors_allowed_methods": _optional_str,
    "cors_allowed_headers": _optional_str,
    "install_py_dep_per_model": _bool,
    "model_snapshot": _bool,
    "models": parse_models,
    "metrics_mode": _metrics_mode,
    "service_envelope": lambda v: _choice(v.strip().lower(), SERVICE_ENVELOPES),
    "log_location": lambda v: v.strip() or "logs",
    "key_file": lambda v: v.strip() or "key_file.json",
    "intra_op_threads": _int_at_least(0),
    "shutdown_timeout": _float_at_least(0),
    "max_connections": _int_at_least(1),
    "header_timeout": _float_at_least(0.1),
    "body_timeout": _float_at_least(0.1),
    "keep_alive_timeout": _float_at_least(0.1),
    "max_model_load_failures": _int_at_least(1),
    "max_workers_total": _int_at_least(0),
    "url_download_timeout": _float_at_least(0.1),
    "url_connect_timeout": _float_at_least(0.1),
    "url_idle_timeout": _float_at_least(0.1),
    "max_archive_size": _int_at_least(1),
    "trusted_archive_keys": lambda v: [k.strip() for k in v.split(",") if k.strip()],
    "require_signed_archives": _bool,
    "use_worker_template": _bool,
    "worker_backend": lambda v: v.strip().lower() or "local",
    "ray_address": lambda v: _ray_address(v.strip()),
    "ray_num_cpus": _int_at_least(0),
    "ray_object_store_memory": lambda v: parse_memory(v, "") if v.strip() not in ("", "0") else 0,
    "log_level": lambda v: _choice(v.strip().upper(), ("DEBUG", "INFO", "WARNING", "ERROR")),
    "log_format": lambda v: _choice(v.strip().lower(), ("plain", "json")),
    "enable_grpc": _optional_bool,
    "grpc_inference_address": _grpc_host,
    "grpc_inference_port": _port,
    "grpc_management_address": _grpc_host,
    "grpc_management_port": _port,
    "grpc_inference_max_connection_age_ms": _int_at_least(0),
    "grpc_inference_max_connection_age_grace_ms": _int_at_least(0),
    "grpc_management_max_connection_age_ms": _int_at_least(0),
    "grpc_management_max_connection_age_grace_ms": _int_at_least(0),
    "enable_grpc_ssl": _bool,
    "grpc_max_concurrent_streams": _int_at_least(1),
}


def _ray_address(value: str) -> str:
    """``auto``, ``host:port`` (``ray://`` client addresses are refused: the server must be a cluster driver)."""
    if not value or value == "auto":
        return value
    if value.startswith("ray://"):
        raise ValueError("ray:// (Ray Client) addresses are not supported: give the head's GCS host:port or auto")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected auto or host:port, got {value!r}")
    return value


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def find_config_file(explicit: Path | None, environ: Mapping[str, str], cwd: Path) -> Path | None:
    """Which config.properties to read: ``--ts-config``, else ``$TS_CONFIG_FILE``, else one in ``cwd``, else none."""
    if explicit is not None:
        return explicit
    from_env = environ.get(CONFIG_FILE_ENV, "").strip()
    if from_env:
        return Path(from_env)
    local = cwd / CONFIG_FILE_NAME
    return local if local.is_file() else None


def load_server_config(
    properties_file: Path | None, environ: Mapping[str, str], overrides: Mapping[str, str]
) -> ServerConfig:
    """Build the configuration from the file, the environment and CLI overrides, in that order."""
    config = ServerConfig()
    if properties_file is not None:
        try:
            text = properties_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read {properties_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{properties_file} is not UTF-8 text") from None
        config.apply(parse_properties(text), str(properties_file))
    from_env = {
        key[len(ENV_PREFIX) :].lower(): value
        for key, value in environ.items()
        if key.startswith(ENV_PREFIX) and key[len(ENV_PREFIX) :].lower() in _PARSERS
    }
    config.apply(from_env, "environment")
    config.apply(overrides, "command line")
    config.check()
    return config


# ---- per-model configuration ----------------------------------------------------------------------------------

# model-config.yaml key -> (ModelConfig field, parser)
_MODEL_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {}


@dataclass
class ModelConfig:
    """Per-version settings: server defaults, overridden by model-config.yaml, overridden at registration."""

    min_workers: int
    max_workers: int
    batch_size: int
    max_batch_delay_ms: float
    response_timeout_s: float
    startup_timeout_s: float
    job_queue_size: int
    device_type: str = "cpu"
    intra_op_threads: int = 0
    optimize: bool = True
    handler: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    service_envelope: str = ""
    # workerMemoryLimit: a worker whose RSS passes it is replaced after its batch (0: no limit)
    worker_memory_limit_bytes: int = 0
    # batch_size was set (server batch_size, model-config.yaml batchSize or registration); when it was not, a batch
    # size the handler declares applies
    batch_size_explicit: bool = False
    # worker_backend=ray: what one worker asks of a cluster node
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    ray_resources: dict[str, float] = field(default_factory=dict)

    @classmethod
    def defaults(cls, server: ServerConfig) -> ModelConfig:
        workers = server.default_workers_per_model
        return cls(
            min_workers=workers,
            max_workers=workers,
            batch_size=server.batch_size or 1,
            batch_size_explicit=server.batch_size is not None,
            max_batch_delay_ms=server.max_batch_delay,
            response_timeout_s=server.default_response_timeout,
            startup_timeout_s=server.default_startup_timeout,
            job_queue_size=server.job_queue_size,
            intra_op_threads=server.intra_op_threads,
            service_envelope=server.service_envelope,
        )

    def updated(self, values: Mapping[str, Any], source: str) -> ModelConfig:
        """A copy with model-config.yaml style keys applied; invalid values raise ConfigError."""
        changes: dict[str, Any] = {}
        raw = dict(self.raw)
        for key, value in values.items():
            if value is None:
                continue
            spec = _MODEL_KEYS.get(key)
            if spec is None:
                raw[key] = value
                if key not in _KNOWN_PASSTHROUGH:
                    log.warning("%s: unknown model configuration key %r kept for the handler", source, key)
                continue
            name, parser = spec
            try:
                changes[name] = parser(value)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"{source}: invalid {key}: {exc}") from None
            raw[key] = value
        if "batch_size" in changes:
            changes["batch_size_explicit"] = True
        result = dataclasses.replace(self, raw=raw, **changes)
        if "minWorkers" in values and "maxWorkers" not in values:
            result.max_workers = max(result.max_workers, result.min_workers)
        if "maxWorkers" in values and "minWorkers" not in values:
            result.min_workers = min(result.min_workers, result.max_workers)
        if result.max_workers < result.min_workers:
            raise ConfigError(f"{source}: maxWorkers ({result.max_workers}) < minWorkers ({result.min_workers})")
        return result


def _yaml_int(minimum: int, maximum: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        return parse_int(value, "", minimum, maximum)

    return parse


def _yaml_float(minimum: float, maximum: float) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        return parse_float(value, "", minimum, maximum)

    return parse


def _device(value: Any) -> str:
    if value not in ("cpu", "gpu"):
        raise ValueError(f"expected cpu or gpu, got {value!r}")
    return str(value)


MAX_RAY_RESOURCES = 16


def _ray_resources(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError("expected a mapping of resource name to amount")
    if len(value) > MAX_RAY_RESOURCES:
        raise ValueError(f"at most {MAX_RAY_RESOURCES} resources")
    resources: dict[str, float] = {}
    for key, amount in value.items():
        if not isinstance(key, str) or not key or len(key) > 128 or key in ("CPU", "GPU", "memory"):
            raise ValueError(f"resource names are strings of 1-128 characters other than CPU, GPU, memory: {key!r}")
        resources[key] = parse_float(amount, key, 0.0001, 1e6)
    return resources


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError("expected a mapping")
    return dict(value)


_MODEL_KEYS.update({
    "minWorkers": ("min_workers", _yaml_int(0, MAX_WORKERS)),
    "maxWorkers": ("max_workers", _yaml_int(0, MAX_WORKERS)),
    "batchSize": ("batch_size", _yaml_int(1, MAX_BATCH_SIZE)),
    "maxBatchDelay": ("max_batch_delay_ms", _yaml_float(0, MAX_BATCH_DELAY_MS)),
    "responseTimeout": ("response_timeout_s", _yaml_float(0.001, MAX_TIMEOUT_S)),
    "startupTimeout": ("startup_timeout_s", _yaml_float(0.001, MAX_TIMEOUT_S)),
    "jobQueueSize": ("job_queue_size", _yaml_int(1, MAX_JOB_QUEUE_SIZE)),
    "deviceType": ("device_type", _device),
    "intraOpThreads": ("intra_op_threads", _yaml_int(0, MAX_THREADS)),
    "optimize": ("optimize", parse_bool),
    "handler": ("handler", _mapping),
    "workerMemoryLimit": ("worker_memory_limit_bytes", lambda value: parse_memory(value, "")),
    "num_cpus": ("num_cpus", _yaml_float(0, 1024)),
    "num_gpus": ("num_gpus", _yaml_float(0, 64)),
    "rayResources": ("ray_resources", _ray_resources),
})  # fmt: skip

# TorchServe model-config keys a handler may read; kept without a warning
_KNOWN_PASSTHROUGH = frozenset({
    "parallelType", "parallelLevel", "deviceIds", "torchrun", "pt2", "continuousBatching", "useVenv",
    "maxRetryTimeoutInSec", "clientTimeoutInMills", "sequenceMaxIdleMSec", "maxSequenceJobQueueSize",
    "maxNumSequence", "sequenceBatching", "asyncCommunication", "retryTimeoutInSec",
})  # fmt: skip


# model-config.yaml is a few lines; these bound the parent's work on an untrusted one (a "billion laughs" file of
# nested aliases expands to gigabytes from a few hundred bytes)
MAX_MODEL_YAML_BYTES = 64 << 10
MAX_MODEL_YAML_NODES = 10_000
MAX_MODEL_YAML_DEPTH = 32


class _PlainYamlLoader(yaml.SafeLoader):
    """``safe_load``'s loader that also refuses anchors and aliases and counts nodes and nesting as it composes."""

    def __init__(self, stream: str | bytes) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise yaml.composer.ComposerError(
                None, None, "anchors and aliases (&, *, <<) are not accepted in model-config.yaml", event.start_mark
            )
        self._nodes += 1
        if self._nodes > MAX_MODEL_YAML_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"more than {MAX_MODEL_YAML_NODES} values in model-config.yaml", event.start_mark
            )
        self._depth += 1
        try:
            if self._depth > MAX_MODEL_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_MODEL_YAML_DEPTH} levels in model-config.yaml",
                    event.start_mark,
                )  # fmt: skip
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_model_yaml(text: str | bytes, source: str) -> dict[str, Any]:
    """Parse model-config.yaml as plain data: no object tags (nothing is executed), no aliases, bounded in size.

    Everything ``yaml.safe_load`` refuses is refused, and also anchors and aliases, more than MAX_MODEL_YAML_BYTES,
    MAX_MODEL_YAML_NODES values or MAX_MODEL_YAML_DEPTH levels: the server parses it, so its cost must be bounded.
    """
    if len(text) > MAX_MODEL_YAML_BYTES:
        raise ConfigError(f"{source} is larger than {MAX_MODEL_YAML_BYTES} bytes ({len(text)})")
    loader = _PlainYamlLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML (only plain YAML is accepted): {exc}") from None
    finally:
        loader.dispose()
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source} must be a mapping of keys to values")
    return data
