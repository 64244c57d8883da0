"""Loading a model from an extracted archive: eager (model file + state_dict or safetensors), TorchScript, ONNX.

torch and onnxruntime are imported here only when the archive needs them: a worker serving an ONNX model never
imports torch. Weights are read with ``torch.load(..., weights_only=True)``, passed explicitly, so a pickle that
would run code fails to load whatever the environment says. TorchScript files and handlers are code: only serve
archives you trust.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelserve.handler import BadInputError, HandlerError

ONNX_SUFFIXES = (".onnx", ".ort")
SAFETENSORS_SUFFIX = ".safetensors"


@dataclass
class TensorSpec:
    """An input or output of a model: name, dtype (numpy name) and shape (-1 for any)."""

    name: str
    dtype: str
    shape: list[int]


@dataclass
class LoadedModel:
    """A model ready to run on numpy arrays, whatever its format."""

    kind: str  # "eager" | "torchscript" | "onnx"
    model: Any
    device: str = "cpu"
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    forms: Any = None  # a FormChooser when the model may run through its optimized form

    def enable_optimization(self, release_original: bool) -> None:
        """Let ``run`` use the frozen, optimized form of a CPU torch model where it measures faster.

        With ``release_original`` the handler promises to call the model through ``run`` only: once the optimized
        form wins everywhere, ``model`` becomes that form and the original is freed.
        """
        if self.kind == "onnx" or self.device != "cpu":
            return
        from modelserve.optimize import FormChooser

        def settled(form: Any) -> None:
            if release_original:
                self.model = form

        self.forms = FormChooser(self.model, f"{self.kind} model", settled)

    def run(self, *args: Any) -> Any:
        """Run the model; numpy arrays in, numpy arrays (or lists/dicts of them) out."""
        if self.kind == "onnx":
            return self._run_onnx(*args)
        return self._run_torch(*args)

    def _run_onnx(self, *args: Any) -> Any:
        if len(args) == 1 and isinstance(args[0], dict):
            feeds = args[0]
        else:
            feeds = {spec.name: value for spec, value in zip(self.inputs, args, strict=False)}
        try:
            outputs = self.model.run(None, feeds)
        except Exception as exc:  # onnxruntime raises its own types for bad shapes and dtypes
            if type(exc).__name__ in ("InvalidArgument", "Fail", "InvalidGraph") or "Invalid" in str(exc)[:80]:
                raise BadInputError(f"the model rejected the input: {_first_line(exc)}") from None
            raise
        return outputs[0] if len(outputs) == 1 else outputs

    def _run_torch(self, *args: Any) -> Any:
        import torch

        tensors = [_to_torch(a, self.device) for a in args]
        call = self.forms if self.forms is not None else self.model
        with torch.inference_mode():
            try:
                output = call(*tensors)
            except (RuntimeError, ValueError, IndexError, TypeError) as exc:
                if _looks_like_input_error(exc):
                    raise BadInputError(f"the model rejected the input: {_first_line(exc)}") from None
                raise
        return _to_numpy(output)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _looks_like_input_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(
        marker in text
        for marker in ("shape", "size mismatch", "expected", "dimension", "dtype", "must match", "channels", "sizes")
    )


def _to_torch(value: Any, device: str) -> Any:
    import torch

    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value)).to(device)
    if isinstance(value, list):
        return [_to_torch(v, device) for v in value]
    if isinstance(value, dict):
        return {k: _to_torch(v, device) for k, v in value.items()}
    return value


def _to_numpy(value: Any) -> Any:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_numpy(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    return value


def _import_model_class(path: Path) -> type[Any]:
    import torch

    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise HandlerError(f"cannot import model file {path.name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    classes = [
        obj
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, torch.nn.Module) and obj.__module__ == module.__name__
    ]
    if len(classes) != 1:
        names = ", ".join(c.__name__ for c in classes) or "none"
        raise HandlerError(f"model file {path.name} must define exactly one torch.nn.Module subclass (found: {names})")
    return classes[0]


def load_state_dict(path: Path, device: Any) -> dict[str, Any]:
    """Weights from a ``.safetensors`` file or a ``.pt``/``.pth`` state_dict read with ``weights_only=True``."""
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import load_file

        return dict(load_file(str(path), device=device))
    import torch

    # weights_only=True is passed explicitly: torch then ignores TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, and a pickle
    # that would import or call anything is refused instead of executed
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        state = torch.load(str(path), map_location=device, weights_only=True)
    except Exception as exc:
        raise HandlerError(
            f"cannot load weights from {path.name} with weights_only=True (only tensors and plain containers are "
            f"accepted; save a state_dict or use safetensors): {_first_line(exc)}"
        ) from None
    if not isinstance(state, dict):
        raise HandlerError(f"{path.name} holds a {type(state).__name__}, expected a state_dict")
    return state


_ORT_TYPES = {"float": "float32", "double": "float64", "float16": "float16"}  # others keep their names (int64, string)


def _onnx_specs(args: Any) -> list[TensorSpec]:
    specs = []
    for arg in args:
        dtype = str(arg.type).replace("tensor(", "").rstrip(")")
        shape = [d if isinstance(d, int) else -1 for d in (arg.shape or [])]
        specs.append(TensorSpec(arg.name, _ORT_TYPES.get(dtype, dtype), shape))
    return specs


def load_onnx(path: Path, threads: int, use_gpu: bool) -> LoadedModel:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads > 0:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = ["CPUExecutionProvider"]
    if use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:
        raise HandlerError(f"onnxruntime cannot load {path.name}: {_first_line(exc)}") from None
    return LoadedModel("onnx", session, "cpu", _onnx_specs(session.get_inputs()), _onnx_specs(session.get_outputs()))


def load_model(model_dir: Path, manifest: dict[str, Any], threads: int, device_type: str = "cpu") -> LoadedModel | None:
    """Load whatever the manifest names; None when the archive has no serialized file and no model file."""
    model = manifest.get("model", {})
    serialized = model.get("serializedFile")
    model_file = model.get("modelFile")
    path = model_dir / serialized if serialized else None
    if path is not None and path.suffix in ONNX_SUFFIXES:
        return load_onnx(path, threads, device_type == "gpu")
    if path is None and not model_file:
        return None
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    device = "cuda" if device_type == "gpu" and torch.cuda.is_available() else "cpu"
    if model_file:
        network = _import_model_class(model_dir / model_file)()
        if path is not None:
            try:
                network.load_state_dict(load_state_dict(path, device))
            except RuntimeError as exc:
                raise HandlerError(f"weights in {path.name} do not fit {model_file}: {_first_line(exc)}") from None
        network.to(device).eval()
        return LoadedModel("eager", network, device)
    if path is None:
        raise HandlerError("the archive has no serialized file to load")
    if path.suffix == SAFETENSORS_SUFFIX:
        raise HandlerError(f"{path.name} holds weights only: archive it with --model-file defining the network")
    try:
        scripted = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
    except Exception as exc:
        raise HandlerError(
            f"{path.name} is not TorchScript ({_first_line(exc)}); a state_dict needs --model-file"
        ) from None
    scripted.eval()
    return LoadedModel("torchscript", scripted, device)
