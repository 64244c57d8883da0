"""TorchServe's ``ts.handler_utils.utils``: ``import_class`` and ``send_intermediate_predict_response``."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def import_class(class_name: str, module_prefix: str | None = None) -> Any:
    """``"package.module.Class"`` (or ``"module.Class"`` under ``module_prefix``) -> the class."""
    if not class_name:
        raise ImportError("class name is not defined")
    module_name, _, name = class_name.rpartition(".")
    if module_prefix:
        module = importlib.import_module(f"{module_prefix}.{module_name}" if module_name else module_prefix)
    elif module_name:
        module = importlib.import_module(module_name)
    else:
        raise ImportError("module name is not defined.")
    found = getattr(module, name, None)
    if found is None:
        raise ImportError(f"class:{name} not found in module:{module.__name__}.")
    return found


def send_intermediate_predict_response(
    ret: list[Any], req_id_map: Mapping[int, str], message: str, code: int, context: Any
) -> None:
    """Send part of each request's answer before the final one.

    Each part goes out at once as a piece of the request's streamed answer (chunked HTTP, or server-sent events);
    the handler's final result is the stream's last piece. ``message`` and ``code`` are accepted for compatibility.
    """
    del message, code
    for idx in req_id_map:
        context.send_intermediate(idx, ret[idx])
