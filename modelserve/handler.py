"""The handler contract, TorchServe-compatible on purpose: ``BaseHandler``, ``Context`` and handler metrics.

A handler module is chosen as TorchServe chooses (``load_handler``): ``file.py:function`` names a function; else a
module-level ``handle(data, context)``; else the module's one handler class (a class with ``handle``; a
``BaseHandler`` subclass or TorchServe's documented custom-service form with no base class). ``initialize(context)``
runs once per worker; ``handle(data, context)`` runs per batch and returns one result per request: ``bytes`` are sent
raw, ``str`` as text, anything else as JSON.

This module imports neither torch nor numpy: handlers import what they need, lazily.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from modelserve.handler_errors import BadInputError, HandlerError, PredictionError
from modelserve.handler_metrics import HandlerMetrics, MetricSample
from modelserve.validation import MAX_BATCH_SIZE

__all__ = [
    "BadInputError",
    "BaseHandler",
    "Context",
    "HandlerError",
    "HandlerMetrics",
    "MetricSample",
    "PredictionError",
    "RequestInfo",
    "RequestProcessor",
    "ResponseInfo",
    "load_handler",
]


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
    # TorchServe's send_intermediate_predict_response: parts sent before the final result, in order
    parts: list[Any] = field(default_factory=list)


class RequestProcessor:
    """One request's headers and response settings, with TorchServe's ``RequestProcessor`` method names."""

    def __init__(self, request: RequestInfo, response: ResponseInfo) -> None:
        self.request = request
        self.response = response

    def get_request_property(self, key: str) -> str | None:
        return self.request.headers.get(key.lower())

    def get_request_properties(self) -> dict[str, str]:
        return self.request.headers

    def report_status(self, code: int, reason_phrase: str | None = None) -> None:
        if not 100 <= code <= 599:
            raise ValueError(f"invalid HTTP status {code}")
        self.response.status = code
        self.response.reason = reason_phrase or ""

    def get_response_status_code(self) -> int:
        return self.response.status

    def get_response_status_phrase(self) -> str | None:
        return self.response.reason or None

    def add_response_property(self, key: str, value: str) -> None:
        if key.lower() == "content-type":
            self.response.content_type = value
        else:
            self.response.headers[key] = value

    def get_response_headers(self) -> dict[str, str]:
        headers = dict(self.response.headers)
        if self.response.content_type is not None:
            headers["content-type"] = self.response.content_type
        return headers

    def get_response_header(self, key: str) -> str | None:
        return self.get_response_headers().get(key)


class Context:
    """Per-worker information plus per-batch request headers and response settings.

    It offers TorchServe's ``Context`` API as well (``system_properties``, ``manifest``, ``request_ids``,
    ``request_processor``, the request-header and response accessors, ``metrics``, the sequence helpers), so
    handlers written against TorchServe run unchanged.
    """

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
        server_version: str = "",
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
            "server_version": server_version,
            "limit_max_image_pixels": True,
        }
        self.metrics = HandlerMetrics(model_name)
        # seconds spent in preprocess / inference / postprocess during the last batch (set by BaseHandler.handle)
        self.timings: dict[str, float] = {}
        self.requests: list[RequestInfo] = []
        self.responses: list[ResponseInfo] = []
        self.request_ids: dict[int, str] = {}
        # TorchServe's streaming stop test per request (callable on the result: True to stop); kept for its handlers
        self.stopping_criteria: list[Callable[[Any], bool | None]] | None = None
        # TorchServe's sequence headers, renamed by the same environment variables
        self.header_key_sequence_id = os.environ.get("TS_REQUEST_SEQUENCE_ID", "ts_request_sequence_id")
        self.header_key_sequence_start = os.environ.get("TS_REQUEST_SEQUENCE_START", "ts_request_sequence_start")
        self.header_key_sequence_end = os.environ.get("TS_REQUEST_SEQUENCE_END", "ts_request_sequence_end")
        # state a handler keeps across batches (TorchServe's handlers set context.cache themselves)
        self.cache: dict[Any, Any] = {}
        # where send_intermediate sends a part at once (the worker sets it); None: parts are kept for the final body
        self.stream_sink: Callable[[int, Any], None] | None = None

    def begin_batch(self, requests: list[RequestInfo]) -> None:
        self.requests = requests
        self.responses = [ResponseInfo() for _ in requests]
        self.request_ids = {i: r.request_id for i, r in enumerate(requests)}
        self.metrics.set_request_ids(self.request_ids)

    @property
    def request_processor(self) -> list[RequestProcessor]:
        return [RequestProcessor(q, r) for q, r in zip(self.requests, self.responses, strict=True)]

    @request_processor.setter
    def request_processor(self, processors: list[RequestProcessor]) -> None:
        # TorchServe's tests build a context by hand and set this list
        self.requests = [p.request for p in processors]
        self.responses = [p.response for p in processors]

    # TorchServe-compatible accessors
    def get_request_id(self, idx: int = 0) -> str | None:
        return self.request_ids.get(idx)

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

    def set_all_response_status(self, code: int = 200, phrase: str = "") -> None:
        for idx in range(len(self.responses)):
            self.set_response_status(code, phrase, idx)

    def get_response_status(self, idx: int) -> tuple[int, str]:
        return self.responses[idx].status, self.responses[idx].reason

    def set_response_header(self, idx: int, key: str, value: str) -> None:
        if key.lower() == "content-type":
            self.responses[idx].content_type = value
        else:
            self.responses[idx].headers[key] = value

    def get_response_headers(self, idx: int) -> dict[str, str]:
        return RequestProcessor(self.requests[idx], self.responses[idx]).get_response_headers()

    def get_sequence_id(self, idx: int) -> str | None:
        return self.get_request_header(idx, self.header_key_sequence_id)

    def send_intermediate(self, idx: int, output: Any) -> None:
        """Send a part of request ``idx``'s answer now, before the final result: the request is answered by a stream
        whose pieces are the parts, then the final result.

        In a worker the part goes out at once (this may wait while the client is slow to read). Without a worker (a
        context built by hand) the parts are kept and sent with the final result as one body, in order.
        """
        if self.stream_sink is not None:
            self.stream_sink(idx, output)
            return
        self.responses[idx].parts.append(output)


def model_signature(model: Any, model_config: Mapping[str, Any]) -> dict[str, Any]:
    """A model's inputs and outputs for OIP metadata: ``inputs``/``outputs`` of model-config.yaml win, else those of
    the model when a runtime loaded it, else none."""
    from modelserve.runtimes import ModelRuntime

    signature: dict[str, Any] = {"inputs": [], "outputs": []}
    if isinstance(model, ModelRuntime):
        signature = dict(model.signature())
    for key in ("inputs", "outputs"):
        configured = model_config.get(key)
        if isinstance(configured, list):
            signature[key] = [dict(item) for item in configured if isinstance(item, dict)]
    return signature


class BaseHandler:
    """Default handler flow: ``preprocess`` -> ``inference`` -> ``postprocess``.

    ``initialize`` loads the archive's model (eager, TorchScript, safetensors weights or ONNX) into ``self.model``
    (a ``modelserve.runtimes.ModelRuntime``). Subclasses override the steps they need.

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
        from modelserve.runtimes import load_model

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

    def signature(self) -> dict[str, Any]:
        """Inputs and outputs for OIP metadata: model-config.yaml ``inputs``/``outputs`` win, else the model's own."""
        return model_signature(self.model, self.context.model_yaml_config if self.context is not None else {})

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


def _import_default(package: str, name: str) -> ModuleType | None:
    """``package.name`` when that module exists (a default handler), else None."""
    try:
        found = importlib.util.find_spec(f"{package}.{name}")
    except ImportError:
        return None
    return importlib.import_module(f"{package}.{name}") if found is not None else None


def _handler_classes(module: ModuleType) -> list[type[Any]]:
    """Classes defined in ``module`` that can serve: they have ``handle`` (TorchServe needs no base class)."""
    classes = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and obj.__module__ == module.__name__ and callable(getattr(obj, "handle", None))
    ]
    if len(classes) > 1:
        # the most derived class wins, as a file may define a base and its specialisation
        classes = [c for c in classes if not any(o is not c and issubclass(o, c) for o in classes)]
    return classes


# the attribute by which a handler says it takes batches of any size (a built-in, or a handler written for it)
BATCHING_ATTRIBUTE = "default_batch_size"


def declared_batch_size(handle: Callable[..., Any], instance: Any) -> int:
    """The batch size a handler declares it is written for, or 0 when it declares none.

    A handler class declares it with a ``default_batch_size`` attribute of its own class, or set on the instance by
    ``initialize`` (which may say 1 for a model with a fixed batch dimension); an inherited one does not count: a
    subclass of a batching built-in may override ``preprocess`` with code that reads only the first request. A
    module-level ``handle`` function declares it with a module attribute of that name. Values that are not an int from
    1 to MAX_BATCH_SIZE are ignored (0).
    """
    if instance is not None:
        value = vars(instance).get(BATCHING_ATTRIBUTE) if hasattr(instance, "__dict__") else None
        if value is None:
            value = type(instance).__dict__.get(BATCHING_ATTRIBUTE)
    else:
        module = sys.modules.get(getattr(handle, "__module__", "") or "")
        value = getattr(module, BATCHING_ATTRIBUTE, None) if module is not None else None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_BATCH_SIZE:
        return 0
    return value


def load_handler(
    model_dir: Path, handler: str, builtin_dir: Path | None, default_package: str | None = None
) -> tuple[HandleFunction, Any]:
    """Import the handler named by the manifest and return its ``handle`` entry (and the instance, if a class).

    ``handler`` is ``file.py``, ``file.py:function``, ``module:function`` or a built-in name. A file the archive holds
    wins; else a name of ``default_package`` (TorchServe's default handlers, ``ts.torch_handler.<name>``, as TorchServe
    resolves an archive naming ``image_classifier``); else modelserve's built-in of that name. The entry is chosen as
    TorchServe chooses it: the named function; else a module-level ``handle``; else the module's one class with a
    ``handle`` method (its ``initialize(context)`` is called by the worker, if it has one).
    """
    module_part, _, function_name = handler.partition(":")
    stem = module_part[:-3] if module_part.endswith(".py") else module_part
    if str(model_dir) not in sys.path:
        sys.path.insert(0, str(model_dir))  # handlers import their sibling files, as in TorchServe
    path = model_dir / f"{stem}.py"
    module = None
    if not path.is_file() and default_package and stem.isidentifier():
        module = _import_default(default_package, stem)
    if module is None:
        if not path.is_file() and builtin_dir is not None and (builtin_dir / f"{stem}.py").is_file():
            path = builtin_dir / f"{stem}.py"
        if not path.is_file():
            raise HandlerError(f"handler file {stem}.py not found in the archive")
        # a handler file named like an installed package (onnx.py) must not shadow that package
        module_name = stem if stem not in sys.modules and importlib.util.find_spec(stem) is None else f"_handler_{stem}"
        module = _import_file(path, module_name)
    if function_name:
        entry = getattr(module, function_name, None)
        if not callable(entry):
            raise HandlerError(f"handler {handler!r}: {stem}.py has no function {function_name!r}")
        return entry, None
    entry = getattr(module, "handle", None)
    if callable(entry) and not inspect.isclass(entry):
        return entry, None
    classes = _handler_classes(module)
    if len(classes) == 1:
        instance = classes[0]()
        return instance.handle, instance
    if len(classes) > 1:
        raise HandlerError(f"{stem}.py defines several handler classes: {', '.join(c.__name__ for c in classes)}")
    raise HandlerError(
        f"{stem}.py defines no handler: expected a handle(data, context) function or one class with "
        "initialize(context) and handle(data, context) methods"
    )
