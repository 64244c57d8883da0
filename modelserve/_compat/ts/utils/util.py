"""TorchServe's ``ts.utils.util``: label mappings, class discovery, model-config.yaml and ``PredictionException``."""

from __future__ import annotations

import enum
import inspect
import itertools
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from functools import wraps
from types import ModuleType
from typing import Any, TypeVar

import yaml

from modelserve.handler import PredictionError

logger = logging.getLogger(__name__)

# HTML tags and character entities, which the text handlers strip
CLEANUP_REGEX = re.compile(r"<.*?>|&([a-z0-9]+|#[0-9]{1,6}|#x[0-9a-f]{1,6});")

F = TypeVar("F", bound=Callable[..., Any])


class PT2Backend(str, enum.Enum):
    """The ``torch.compile`` backends TorchServe accepts in model-config.yaml's ``pt2`` section."""

    EAGER = "eager"
    AOT_EAGER = "aot_eager"
    INDUCTOR = "inductor"
    NVFUSER = "nvfuser"
    AOT_NVFUSER = "aot_nvfuser"
    AOT_CUDAGRAPHS = "aot_cudagraphs"
    OFI = "ofi"
    FX2TRT = "fx2trt"
    ONNXRT = "onnxrt"
    IPEX = "ipex"
    TORCHXLA_TRACE_ONCE = "torchxla_trace_once"
    OPENVINO = "openvino"
    TENSORRT = "tensorrt"
    HPU_BACKEND = "hpu_backend"


class PredictionException(PredictionError):
    """Raise from a handler to answer with ``error_code`` and ``message`` (TorchServe's name and signature)."""

    def __str__(self) -> str:
        return f"{self.message} : {self.error_code}"


def list_classes_from_module(module: ModuleType, parent_class: type[Any] | None = None) -> list[type[Any]]:
    """The classes defined in ``module`` itself (not imported), in name order; only subclasses of ``parent_class``."""
    classes = [
        member for _, member in inspect.getmembers(module, inspect.isclass) if member.__module__ == module.__name__
    ]
    if parent_class is not None:
        return [c for c in classes if issubclass(c, parent_class)]
    return classes


def check_valid_pt2_backend(backend: str) -> bool:
    if backend in {member.value for member in PT2Backend}:
        return True
    logger.warning("%s is not a supported backend", backend)
    return False


def load_label_mapping(mapping_file_path: str | os.PathLike[str]) -> dict[str, str] | None:
    """``index_to_name.json`` as ``{"0": "cat"}``; None (and a warning) when the file is missing.

    Values may be ``["n02123045", "cat"]`` lists (the last item is the name); ``{"object_type_names": [...]}``
    is the older list form.
    """
    if not os.path.isfile(mapping_file_path):
        logger.warning("%r is missing. Inference output will not include class name.", str(mapping_file_path))
        return None
    with open(mapping_file_path, encoding="utf-8") as file:
        mapping = json.load(file)
    if not isinstance(mapping, dict):
        raise ValueError('index->name JSON mapping should be in "class": "label" format.')
    names = mapping.get("object_type_names")
    if isinstance(names, list):
        return {str(index): str(name) for index, name in enumerate(names)}
    labels: dict[str, str] = {}
    for key, value in mapping.items():
        name = value[-1] if isinstance(value, list) and value else value
        if not isinstance(name, str):
            raise ValueError("labels in index->name mapping must be either str or List[str]")
        labels[str(key)] = name
    return labels


def map_class_to_label(
    probs: list[Any], mapping: dict[str, str] | None = None, lbl_classes: Iterable[Sequence[Any]] | None = None
) -> list[dict[str, Any]]:
    """One ``{label: probability}`` dict per row of ``probs``; classes are the row's indices unless given."""
    if not isinstance(probs, list):
        raise TypeError("Convert classes to list before doing mapping")
    if mapping is not None and not isinstance(mapping, dict):
        raise TypeError("Mapping must be a dict")
    classes: Iterable[Sequence[Any]] = (
        lbl_classes if lbl_classes is not None else itertools.repeat(range(len(probs[0])) if probs else range(0))
    )
    results = []
    for row_classes, row in zip(classes, probs, strict=False):
        entry: dict[str, Any] = {}
        for label_class, prob in zip(row_classes, row, strict=False):
            key = str(label_class)
            if mapping is not None:
                if key not in mapping:
                    raise KeyError(f"the label mapping has no entry for class {key}")
                key = mapping[key]
            entry[key] = prob
        results.append(entry)
    return results


def get_yaml_config(yaml_file_path: str | os.PathLike[str]) -> Any:
    """A YAML file read with ``yaml.safe_load`` (no Python object tags)."""
    with open(yaml_file_path, encoding="utf-8") as file:
        return yaml.safe_load(file)


def deprecated(
    version: Any, replacement: str = "", klass: type[Warning] = PendingDeprecationWarning
) -> Callable[[F], F]:
    """Mark a function as deprecated: calling it warns with ``klass``."""

    def deprecator(func: F) -> F:
        @wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            warnings.warn(f"{func.__name__} is deprecated in {version} and moved to {replacement}", klass, stacklevel=2)
            return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deprecator
