"""Safetensors weights: an eager model (the archive's model file) whose state_dict is a ``.safetensors`` file.

Safetensors holds tensors only, so reading it runs no code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from modelserve.archive.manifest import Manifest
from modelserve.handler_errors import HandlerError
from modelserve.runtimes.base import suffix_of
from modelserve.runtimes.eager import EagerRuntime


class SafetensorsRuntime(EagerRuntime):
    name: ClassVar[str] = "safetensors"
    suffixes: ClassVar[tuple[str, ...]] = (".safetensors",)

    @classmethod
    def detect(cls, manifest: Manifest) -> bool:
        return suffix_of(manifest) in cls.suffixes

    @classmethod
    def read_weights(cls, path: Path, device: str) -> dict[str, Any]:
        from safetensors.torch import load_file

        return dict(load_file(str(path), device=device))

    @classmethod
    def load(cls, model_dir: Path, manifest: Manifest, threads: int, device_type: str) -> EagerRuntime:
        if not manifest.model_file:
            name = Path(str(manifest.serialized_file)).name
            raise HandlerError(f"{name} holds weights only: archive it with --model-file defining the network")
        return super().load(model_dir, manifest, threads, device_type)
