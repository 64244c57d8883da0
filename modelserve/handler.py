"""The handler contract, TorchServe-compatible on purpose: ``BaseHandler``, ``Context`` and handler metrics.

A handler module defines one ``BaseHandler`` subclass, or a function ``handle(data, context)`` named in the manifest
as ``file.py:function``. ``initialize(context)`` runs once per worker; ``handle(data, context)`` runs per batch and
returns one result per request: ``bytes`` are sent raw, ``str`` as text, anything else as JSON.

This module imports neither torch nor numpy: handlers import what they need, lazily.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any


class HandlerError(Exception):
    """Raised by the server when a handler module cannot be loaded or breaks the contract."""


class BadInputError(ValueError):
    """Raise from a handler when a request's input is malformed: the client gets 400 with this message."""


@dataclass
class MetricSample:
    """One handler metric update, carried back to the parent in the reply frame."""

    kind: str  # "counter" | "gauge" | "histogram"
    name: str
    value: float
    labels: dict[str, str]
    description: str = ""


class HandlerMetrics:
    """``context.metrics``: counters, gauges and histograms a handler adds; they appear on ``/metrics``.

    Names get the ``modelserve_handler_`` prefix and the ``model_name``/``model_version`` labels in the parent.
    """

    def __init__(self) -> None:
        self._samples: list[MetricSample] = []

    def add_counter(
        self, name: str, value: float = 1.0, labels: dict[str, str] | None = None, description: str = ""
    ) -> None:
        if value < 0:
            raise ValueError("a counter can only increase")
        self._record("counter", name, value, labels, description)

    def set_gauge(self, name: str, value: float, labels: dict[str, str] | None = None, description: str = "") -> None:
        self._record("gauge", name, value, labels, description)

    def observe(self, name: str, value: float, labels: dict[str, str] | None = None, description: str = "") -> None:
        """Add one observation to histogram ``name``."""
        self._record("histogram", name, value, labels, description)

    def _record(self, kind: str, name: str, value: float, labels: dict[str, str] | None, description: str) -> None:
        if not name.replace("_", "a").isalnum() or not name[0].isalpha():
            raise ValueError(f"invalid metric name {name!r}: use letters, digits and '_'")
        clean = {str(k): str(v) for k, v in (labels or {}).items()}
        self._samples.append(MetricSample(kind, name, float(value), clean, description))

    def drain(self) -> list[MetricSample]:
        samples, self._samples = self._samples, []
        return samples


@dataclass
class RequestInfo:
    """What the handler sees of one request besides its body."""

    request_id: str
    headers: dict[str, str]
    content_type: str


@dataclass
class ResponseInfo:
    """What the handler decided about one response."""

    status: int = 200
    reason: str = ""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)


class Context:
    """Per-worker information plus per-batch request headers and response settings."""

    def __init__(
        self,
        model_name: str,
        model_version: str,
        model_dir: str,
        manifest: dict[str, Any],
        batch_size: int,
        model_yaml_config: dict[str, Any],
        intra_op_threads: int,
        gpu_id: int | None = None,
    ) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.manifest = manifest
        self.model_yaml_config = model_yaml_config
        self.system_properties: dict[str, Any] = {
            "model_dir": model_dir,
            "batch_size": batch_size,
            "gpu_id": gpu_id,
            "intra_op_threads": intra_op_threads,
            "server_name": "modelserve",
        }
        self.metrics = HandlerMetrics()
        # seconds spent in preprocess / inference / postprocess during the last batch (set by BaseHandler.handle)
        self.timings: dict[str, float] = {}
        self.requests: list[RequestInfo] = []
        self.responses: list[ResponseInfo] = []

    def begin_batch(self, requests: list[RequestInfo]) -> None:
        self.requests = requests
        self.responses = [ResponseInfo() for _ in requests]

    # TorchServe-compatible accessors
    def get_request_id(self, idx: int = 0) -> str:
        return self.requests[idx].request_id

    def get_request_header(self, idx: int, key: str) -> str | None:
        return self.requests[idx].headers.get(key.lower())

    def get_all_request_header(self, idx: int) -> dict[str, str]:
        return dict(self.requests[idx].headers)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.responses[idx].content_type = value

    def get_response_content_type(self, idx: int) -> str | None:
        return self.responses[idx].content_type

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        if not 100 <= code <= 599:
            raise ValueError(f"invalid HTTP status {code}")
        self.responses[idx].status = code
        self.responses[idx].reason = phrase

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        self.responses[idx].headers[key] = value


class BaseHandler:
    """Default handler flow: ``preprocess`` -> ``inference`` -> ``postprocess``.

    ``initialize`` loads the archive's model (eager, TorchScript, safetensors weights or ONNX) into ``self.model``
    (a ``modelserve.loading.LoadedModel``). Subclasses override the steps they need.

    A subclass that defines ``preprocess_one(item)`` and ``collate(samples)`` gets per-request input errors: an item
    whose ``preprocess_one`` raises ``BadInputError`` is answered with 400 while the rest of the batch runs.

    On CPU, ``self.model.run`` may call a frozen, optimized form of a torch model where it measures faster
    (``modelserve.optimize``; ``optimize: false`` in model-config.yaml turns it off). A handler that calls the model
    only through ``self.model.run`` sets ``calls_model_through_run = True`` (the default when ``inference`` is not
    overridden) so the original module can be freed once the optimized form wins everywhere.
    """

    calls_model_through_run: bool | None = None

    def __init__(self) -> None:
        self.context: Context | None = None
        self.model: Any = None
        self.initialized = False

    @property
    def handler_config(self) -> dict[str, Any]:
        """The ``handler:`` section of model-config.yaml."""
        if self.context is None:
            return {}
        section = self.context.model_yaml_config.get("handler") or {}
        return section if isinstance(section, dict) else {}

    def initialize(self, context: Context) -> None:
        from modelserve.loading import load_model

        self.context = context
        model_dir = Path(context.system_properties["model_dir"])
        device = str(context.model_yaml_config.get("deviceType", "cpu"))
        threads = int(context.system_properties.get("intra_op_threads") or 0)
        self.model = load_model(model_dir, context.manifest, threads, device)
        if self.model is not None and context.model_yaml_config.get("optimize", True) is not False:
            through_run = self.calls_model_through_run
            if through_run is None:
                through_run = type(self).inference is BaseHandler.inference
            self.model.enable_optimization(release_original=through_run)
        self.initialized = True

    def preprocess_one(self, item: dict[str, Any]) -> Any:
        raise NotImplementedError

    def collate(self, samples: list[Any]) -> Any:
        return samples

    def preprocess(self, data: list[dict[str, Any]]) -> Any:
        return [item.get("data", item.get("body")) for item in data]

    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        if self.model is None:
            return data
        run = getattr(self.model, "run", None)
        return run(data, *args) if run is not None else self.model(data, *args, **kwargs)

    def postprocess(self, data: Any) -> list[Any]:
        return list(data)

    def _per_item(self) -> bool:
        return type(self).preprocess_one is not BaseHandler.preprocess_one

    def _run_samples(self, samples: list[Any]) -> list[Any]:
        outputs = self.postprocess(self.inference(self.collate(samples)))
        if len(outputs) != len(samples):
            raise RuntimeError(f"postprocess returned {len(outputs)} results for {len(samples)} inputs")
        return outputs

    def _run_isolated(self, samples: list[Any], indices: list[int], results: list[Any], context: Context) -> None:
        """Run the batch; if the model refuses it as bad input, run each request alone so only the bad ones fail."""
        try:
            outputs = self._run_samples(samples)
        except BadInputError as exc:
            if len(samples) == 1:
                self._reject(indices[0], str(exc), results, context)
                return
            for sample, index in zip(samples, indices, strict=True):
                self._run_isolated([sample], [index], results, context)
            return
        for index, output in zip(indices, outputs, strict=True):
            results[index] = output

    @staticmethod
    def _reject(index: int, message: str, results: list[Any], context: Context) -> None:
        context.set_response_status(400, message, index)
        results[index] = {"code": 400, "type": "BadRequestException", "message": message}

    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        self.context = context
        start = time.perf_counter()
        if not self._per_item():
            batch = self.preprocess(data)
            after_pre = time.perf_counter()
            output = self.inference(batch)
            after_inf = time.perf_counter()
            results = self.postprocess(output)
        else:
            results = [None] * len(data)
            samples: list[Any] = []
            indices: list[int] = []
            for index, item in enumerate(data):
                try:
                    samples.append(self.preprocess_one(item))
                    indices.append(index)
                except BadInputError as exc:
                    self._reject(index, str(exc), results, context)
            after_pre = time.perf_counter()
            if samples:
                self._run_isolated(samples, indices, results, context)
            after_inf = time.perf_counter()
        context.timings = {
            "preprocess": after_pre - start,
            "inference": after_inf - after_pre,
            "postprocess": time.perf_counter() - after_inf,
        }
        return results


HandleFunction = Callable[[list[dict[str, Any]], Context], list[Any]]


def _import_file(path: Path, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise HandlerError(f"cannot import handler file {path.name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def load_handler(model_dir: Path, handler: str, builtin_dir: Path | None) -> tuple[HandleFunction, BaseHandler | None]:
    """Import the handler named by the manifest and return its ``handle`` entry (and the instance, if a class).

    ``handler`` is ``file.py``, ``file.py:function``, ``module:function`` or a built-in name.
    """
    module_part, _, function_name = handler.partition(":")
    stem = module_part[:-3] if module_part.endswith(".py") else module_part
    path = model_dir / f"{stem}.py"
    if not path.is_file() and builtin_dir is not None and (builtin_dir / f"{stem}.py").is_file():
        path = builtin_dir / f"{stem}.py"
    if not path.is_file():
        raise HandlerError(f"handler file {stem}.py not found in the archive")
    # a handler file named like an installed package (onnx.py) must not shadow that package
    module_name = stem if stem not in sys.modules and importlib.util.find_spec(stem) is None else f"_handler_{stem}"
    if str(model_dir) not in sys.path:
        sys.path.insert(0, str(model_dir))  # handlers import their sibling files, as in TorchServe
    module = _import_file(path, module_name)
    if function_name:
        entry = getattr(module, function_name, None)
        if not callable(entry):
            raise HandlerError(f"handler {handler!r}: {stem}.py has no function {function_name!r}")
        return entry, None
    classes = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, BaseHandler) and obj.__module__ == module.__name__
    ]
    if len(classes) > 1:
        # the most derived class wins, as a file may define a base and its specialisation
        classes = [c for c in classes if not any(o is not c and issubclass(o, c) for o in classes)]
    if len(classes) == 1:
        instance = classes[0]()
        return instance.handle, instance
    if len(classes) > 1:
        raise HandlerError(f"{stem}.py defines several handler classes: {', '.join(c.__name__ for c in classes)}")
    entry = getattr(module, "handle", None)
    if callable(entry):
        return entry, None
    raise HandlerError(f"{stem}.py defines no BaseHandler subclass and no handle(data, context) function")
