"""Model formats: one ``ModelRuntime`` per format, registered in ``RUNTIMES``.

The first runtime whose ``detect`` accepts the manifest serves the archive; a manifest naming neither a serialized
file nor a model file has no runtime (its handler is plain Python). A new format is one module defining a
``ModelRuntime`` subclass and one entry here, placed before any entry that would also accept its manifests.

Importing this package imports neither torch nor onnxruntime: the server asks ``platform_for`` and ``needs_torch``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelserve.archive.manifest import Manifest
from modelserve.runtimes.base import ModelRuntime, TensorSpec, UnknownFormatError, suffix_of
from modelserve.runtimes.eager import EagerRuntime
from modelserve.runtimes.onnx import OnnxRuntime
from modelserve.runtimes.safetensors import SafetensorsRuntime
from modelserve.runtimes.torchscript import TorchScriptRuntime

__all__ = [
    "RUNTIMES",
    "ModelRuntime",
    "TensorSpec",
    "UnknownFormatError",
    "detect",
    "load_model",
    "needs_torch",
    "platform_for",
]

RUNTIMES: tuple[type[ModelRuntime], ...] = (OnnxRuntime, SafetensorsRuntime, EagerRuntime, TorchScriptRuntime)
PYTHON_PLATFORM = "python"  # what OIP metadata says of a model its handler runs by itself


def detect(manifest: Manifest) -> type[ModelRuntime] | None:
    """The runtime serving the manifest's model; None for a handler-only archive.

    UnknownFormatError when the manifest names a file no runtime reads.
    """
    if not manifest.serialized_file and not manifest.model_file:
        return None
    for runtime in RUNTIMES:
        if runtime.detect(manifest):
            return runtime
    known = ", ".join(dict.fromkeys(suffix for runtime in RUNTIMES for suffix in runtime.suffixes))
    with_model_file = f" with model file {manifest.model_file}" if manifest.model_file else ""
    raise UnknownFormatError(
        f"no model runtime reads {manifest.serialized_file}{with_model_file} (suffix {suffix_of(manifest)!r}; "
        f"known: {known}); a handler that loads it itself does so in its own initialize"
    )


def _known(manifest: Manifest) -> type[ModelRuntime] | None:
    try:
        return detect(manifest)
    except UnknownFormatError:
        return None  # a file the handler reads by itself


def platform_for(manifest: Manifest) -> str:
    """The OIP platform name of the archive's model ("onnxruntime_onnx", "pytorch_libtorch" or "python")."""
    runtime = _known(manifest)
    return runtime.platform if runtime is not None else PYTHON_PLATFORM


def needs_torch(manifest: Manifest) -> bool:
    """Whether the archive's workers will import torch (and so are best forked from the torch template)."""
    runtime = _known(manifest)
    return runtime is not None and runtime.needs_torch


def manifest_of(data: dict[str, Any]) -> Manifest:
    """The model fields a runtime reads, from a manifest as handlers see it (TorchServe's JSON form), unvalidated.

    Handlers written for TorchServe build contexts by hand with partial manifests, so nothing else is required.
    """
    model = data.get("model") or {}
    return Manifest(
        model_name=str(model.get("modelName", "")),
        handler=str(model.get("handler", "")),
        serialized_file=model.get("serializedFile") or None,
        model_file=model.get("modelFile") or None,
    )


def load_model(
    model_dir: Path, manifest: dict[str, Any], threads: int, device_type: str = "cpu"
) -> ModelRuntime | None:
    """Load whatever the manifest names; None when the archive has no serialized file and no model file."""
    described = manifest_of(manifest)
    runtime = detect(described)
    return runtime.load(model_dir, described, threads, device_type) if runtime is not None else None
