"""ONNX: a serialized ``.onnx`` or ``.ort`` file, run by onnxruntime (imported at load; torch never is)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from modelserve.archive.manifest import Manifest
from modelserve.handler_errors import BadInputError, HandlerError
from modelserve.runtimes.base import ModelRuntime, TensorSpec, first_line, suffix_of

if TYPE_CHECKING:
    import numpy as np  # the server imports this table for platform and needs_torch: no numpy there

# ONNX element types whose numpy names differ; the others (int64, bool, string, ...) are spelled alike
_NUMPY_NAMES = {"float": "float32", "double": "float64"}


def _specs(args: Any) -> list[TensorSpec]:
    specs = []
    for arg in args:
        dtype = str(arg.type).replace("tensor(", "").rstrip(")")
        shape = [d if isinstance(d, int) else -1 for d in (arg.shape or [])]
        specs.append(TensorSpec(arg.name, _NUMPY_NAMES.get(dtype, dtype), shape))
    return specs


def no_spinning(options: Any) -> None:
    """ONNX Runtime's pool threads spin between runs by default, burning a core each while the worker waits for its
    next batch, on the cores the server's front end needs: a worker's threads sleep instead (measured: 2 intra-op
    threads with batches every 2 ms used 1.32 cores spinning, 0.45 not)."""
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")


class OnnxRuntime(ModelRuntime):
    name: ClassVar[str] = "onnx"
    platform: ClassVar[str] = "onnxruntime_onnx"
    needs_torch: ClassVar[bool] = False
    suffixes: ClassVar[tuple[str, ...]] = (".onnx", ".ort")
    feeds_by_name: ClassVar[bool] = True

    @classmethod
    def detect(cls, manifest: Manifest) -> bool:
        return suffix_of(manifest) in cls.suffixes

    @classmethod
    def load(cls, model_dir: Path, manifest: Manifest, threads: int, device_type: str) -> OnnxRuntime:
        import onnxruntime as ort

        path = model_dir / str(manifest.serialized_file)
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        no_spinning(options)
        providers = ["CPUExecutionProvider"]
        if device_type == "gpu" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as exc:
            raise HandlerError(f"onnxruntime cannot load {path.name}: {first_line(exc)}") from None
        return cls(session, "cpu", _specs(session.get_inputs()), _specs(session.get_outputs()))

    def run(self, *args: Any) -> Any:
        """Inputs positionally in the model's order, or one dict of feeds; one output, or the list of them."""
        if len(args) == 1 and isinstance(args[0], dict):
            feeds = args[0]
        else:
            feeds = {spec.name: value for spec, value in zip(self.inputs, args, strict=False)}
        outputs = self.run_named(feeds)
        return outputs[0] if len(outputs) == 1 else outputs

    def run_named(self, feeds: dict[str, np.ndarray]) -> list[Any]:
        try:
            outputs: list[Any] = self.model.run(None, feeds)
        except Exception as exc:  # onnxruntime raises its own types for bad shapes and dtypes
            if type(exc).__name__ in ("InvalidArgument", "Fail", "InvalidGraph") or "Invalid" in str(exc)[:80]:
                raise BadInputError(f"the model rejected the input: {first_line(exc)}") from None
            raise
        return outputs
