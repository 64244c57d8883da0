"""Eager PyTorch: the archive's model file defines one ``torch.nn.Module``; its state_dict, if any, is the
serialized ``.pt``/``.pth``/``.bin`` file.

Weights are read with ``torch.load(..., weights_only=True)``, passed explicitly, so a pickle that would run code
fails to load whatever the environment says. The model file is code: only serve archives you trust.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

from modelserve.archive.manifest import Manifest
from modelserve.handler_errors import HandlerError
from modelserve.runtimes.base import first_line, suffix_of
from modelserve.runtimes.pytorch import TorchRuntime, torch_device


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


class EagerRuntime(TorchRuntime):
    name: ClassVar[str] = "eager"
    suffixes: ClassVar[tuple[str, ...]] = (".pt", ".pth", ".bin")

    @classmethod
    def detect(cls, manifest: Manifest) -> bool:
        suffix = suffix_of(manifest)
        return bool(manifest.model_file) and (suffix is None or suffix in cls.suffixes)

    @classmethod
    def read_weights(cls, path: Path, device: str) -> dict[str, Any]:
        """A state_dict read with ``weights_only=True``; HandlerError for anything else."""
        import torch

        # weights_only=True is passed explicitly: torch then ignores TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, and a pickle
        # that would import or call anything is refused instead of executed
        os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
        try:
            state = torch.load(str(path), map_location=device, weights_only=True)
        except Exception as exc:
            raise HandlerError(
                f"cannot load weights from {path.name} with weights_only=True (only tensors and plain containers are "
                f"accepted; save a state_dict or use safetensors): {first_line(exc)}"
            ) from None
        if not isinstance(state, dict):
            raise HandlerError(f"{path.name} holds a {type(state).__name__}, expected a state_dict")
        return state

    @classmethod
    def load(cls, model_dir: Path, manifest: Manifest, threads: int, device_type: str) -> EagerRuntime:
        device = torch_device(threads, device_type)
        model_file = str(manifest.model_file)
        network = _import_model_class(model_dir / model_file)()
        if manifest.serialized_file:
            path = model_dir / manifest.serialized_file
            try:
                network.load_state_dict(cls.read_weights(path, device))
            except RuntimeError as exc:
                raise HandlerError(f"weights in {path.name} do not fit {model_file}: {first_line(exc)}") from None
        network.to(device).eval()
        return cls(network, device)
