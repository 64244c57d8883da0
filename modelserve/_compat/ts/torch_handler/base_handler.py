"""TorchServe's ``BaseHandler``: loads the archive's model (eager, TorchScript or ONNX) and runs
``preprocess`` -> ``inference`` -> ``postprocess`` per batch, or ``explain_handle`` for explanation requests.

Differences from TorchServe, on purpose: weights are read with ``weights_only=True`` always (a state_dict or
safetensors; a pickle that would run code is refused), AOT-compiled ``.so`` models are not supported, and the
PyTorch profiler switch (``ENABLE_TORCH_PROFILER``) is not honoured.
"""

from __future__ import annotations

import abc
import importlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from modelserve.runtimes.eager import EagerRuntime
from modelserve.runtimes.safetensors import SafetensorsRuntime
from ts.handler_utils.timer import timed
from ts.utils.util import check_valid_pt2_backend, list_classes_from_module, load_label_mapping

logger = logging.getLogger(__name__)

# the request header TorchServe's front end sets on /explanations requests (and "describe" for customized describe)
EXPLAIN_HEADER = "explain"
DESCRIBE_HEADER = "describe"


def _compile_options(config: dict[str, Any]) -> dict[str, Any] | None:
    """``torch.compile`` keyword arguments from model-config.yaml's ``pt2`` section, or None when it asks for none."""
    pt2 = config.get("pt2")
    if pt2 is None:
        return None
    if isinstance(pt2, dict) and "compile" in pt2:
        options = dict(pt2["compile"] or {})
        if options.pop("enable", False) is not True:
            return None
    elif isinstance(pt2, dict) and "export" in pt2:
        return None
    elif isinstance(pt2, str):
        options = {"backend": pt2}
    elif isinstance(pt2, dict):
        options = dict(pt2)
    else:
        raise ValueError("pt2 should be str or dict")
    if "backend" in options and not check_valid_pt2_backend(options["backend"]):
        return None
    return options


class BaseHandler(abc.ABC):  # noqa: B024 - abstract in name only, as TorchServe's: it is instantiated as is
    """Base default handler to load TorchScript or eager-mode (state_dict) models, per TorchServe's contract."""

    def __init__(self) -> None:
        self.model: Any = None
        self.mapping: dict[str, str] | None = None
        self.device: Any = None
        self.initialized = False
        self.context: Any = None
        self.model_pt_path: str | None = None
        self.manifest: Any = None
        self.map_location: str | None = None
        self.explain = False
        self.target = 0
        self.profiler_args: dict[str, Any] = {}
        self.model_yaml_config: dict[str, Any] = {}

    def initialize(self, context: Any) -> None:
        """Pick the device, load the model named by the manifest, read ``index_to_name.json``."""
        self.context = context
        self.model_yaml_config = getattr(context, "model_yaml_config", None) or {}
        properties = context.system_properties
        gpu_id = properties.get("gpu_id")
        if torch.cuda.is_available() and gpu_id is not None:
            self.map_location = "cuda"
            self.device = torch.device(f"cuda:{gpu_id}")
        elif torch.backends.mps.is_available() and gpu_id is not None:
            self.map_location = "mps"
            self.device = torch.device("mps")
        else:
            self.map_location = "cpu"
            self.device = torch.device("cpu")
        self.manifest = context.manifest
        model_dir = str(properties.get("model_dir"))
        model = self.manifest.get("model", {})
        serialized = model.get("serializedFile")
        self.model_pt_path = os.path.join(model_dir, serialized) if serialized else None
        model_file = model.get("modelFile", "")
        path = self.model_pt_path or ""
        if model_file:
            self.model = self._load_pickled_model(model_dir, model_file, self.model_pt_path)
            self.model.to(self.device)
            self.model.eval()
        elif path.endswith(".pt"):
            self.model = self._load_torchscript_model(path)
            self.model.eval()
        elif path.endswith(".onnx"):
            self.model = self._load_onnx_session(path, int(properties.get("intra_op_threads") or 0))
        elif path.endswith(".so"):
            raise RuntimeError(f"{serialized}: AOT-compiled models (.so) are not supported by modelserve")
        else:
            raise RuntimeError("No model weights could be loaded")
        options = _compile_options(self.model_yaml_config)
        if options is not None:
            try:
                self.model = torch.compile(self.model, **options)
                logger.info("Compiled model with %s", ", ".join(f"{k} {v}" for k, v in options.items()))
            except Exception as exc:
                logger.warning("Compiling the model with %s failed; proceeding without compilation: %s", options, exc)
        self.mapping = load_label_mapping(os.path.join(model_dir, "index_to_name.json"))
        self.initialized = True

    def _load_torchscript_model(self, model_pt_path: str) -> Any:
        return torch.jit.load(model_pt_path, map_location=self.device)  # type: ignore[no-untyped-call]

    def _load_pickled_model(self, model_dir: str, model_file: str, model_pt_path: str | None) -> Any:
        """Instantiate the one class of ``model_file`` and load the state_dict (or safetensors) into it."""
        if not os.path.isfile(os.path.join(model_dir, model_file)):
            raise RuntimeError("Missing the model.py file")
        module = importlib.import_module(model_file.split(".", maxsplit=1)[0])
        classes = list_classes_from_module(module)
        if len(classes) != 1:
            raise ValueError(f"Expected only one class as model definition. {classes}")
        model = classes[0]()
        if model_pt_path:
            path = Path(model_pt_path)
            weights = SafetensorsRuntime if path.suffix in SafetensorsRuntime.suffixes else EagerRuntime
            model.load_state_dict(weights.read_weights(path, str(self.device)))
        return model

    @staticmethod
    def _load_onnx_session(path: str, threads: int) -> Any:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeError(f"{os.path.basename(path)} needs onnxruntime: pip install modelserve[onnx]") from None
        from modelserve.runtimes.onnx import no_spinning

        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        no_spinning(options)
        return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])

    @timed
    def preprocess(self, data: Any) -> Any:
        """The request data as a tensor; handlers override this for their input format."""
        return torch.as_tensor(data, device=self.device)

    @timed
    def inference(self, data: Any, *args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode():
            return self.model(data.to(self.device), *args, **kwargs)

    @timed
    def postprocess(self, data: Any) -> list[Any]:
        return data.tolist()  # type: ignore[no-any-return]

    def handle(self, data: list[dict[str, Any]], context: Any) -> Any:
        """One batch: describe, explain or predict, as the request headers ask; adds the ``HandlerTime`` metric."""
        start = time.time()
        self.context = context
        if self._is_describe():
            output: Any = [self.describe_handle()]
        else:
            data_preprocess = self.preprocess(data)
            if self._is_explain():
                output = self.explain_handle(data_preprocess, data)
            else:
                output = self.postprocess(self.inference(data_preprocess))
        context.metrics.add_time("HandlerTime", round((time.time() - start) * 1000, 2), None, "ms")
        return output

    def explain_handle(self, data_preprocess: Any, raw_data: list[dict[str, Any]]) -> Any:
        """Explanations from the subclass's ``get_insights(data, inputs, target)`` (Captum in the default handlers)."""
        inputs = None
        target: Any = 0
        row = raw_data[0]
        if isinstance(row, dict):
            inputs = row.get("data") or row.get("body")
            target = row.get("target") or 0
        return self.get_insights(data_preprocess, inputs, target)  # type: ignore[attr-defined]

    def _header_is_true(self, name: str) -> bool:
        context = self.context
        return bool(context is not None and context.get_request_header(0, name) == "True")

    def _is_explain(self) -> bool:
        if self._header_is_true(EXPLAIN_HEADER):
            self.explain = True
            return True
        return False

    def _is_describe(self) -> bool:
        return self._header_is_true(DESCRIBE_HEADER)

    def describe_handle(self) -> Any:
        """What a customized describe returns; None unless a subclass says more."""
        return None

    def get_device(self) -> Any:
        return self.device
