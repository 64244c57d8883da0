"""TorchScript: a serialized ``.pt``/``.pth``/``.bin``/``.torchscript`` file and no model file.

A TorchScript file is code: only serve archives you trust.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from modelserve.archive.manifest import Manifest
from modelserve.handler_errors import HandlerError
from modelserve.runtimes.base import first_line, suffix_of
from modelserve.runtimes.pytorch import TorchRuntime, torch_device


class TorchScriptRuntime(TorchRuntime):
    name: ClassVar[str] = "torchscript"
    suffixes: ClassVar[tuple[str, ...]] = (".pt", ".pth", ".bin", ".torchscript")

    @classmethod
    def detect(cls, manifest: Manifest) -> bool:
        return not manifest.model_file and suffix_of(manifest) in cls.suffixes

    @classmethod
    def load(cls, model_dir: Path, manifest: Manifest, threads: int, device_type: str) -> TorchScriptRuntime:
        import torch

        device = torch_device(threads, device_type)
        path = model_dir / str(manifest.serialized_file)
        try:
            scripted = torch.jit.load(str(path), map_location=device)  # type: ignore[no-untyped-call]
        except Exception as exc:
            raise HandlerError(
                f"{path.name} is not TorchScript ({first_line(exc)}); a state_dict needs --model-file"
            ) from None
        scripted.eval()
        return cls(scripted, device)
