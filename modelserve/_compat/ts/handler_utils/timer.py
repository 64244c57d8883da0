"""TorchServe's ``timed`` decorator: with ``handler: {profile: true}`` in model-config.yaml, each call of a decorated
handler method adds its time in milliseconds to ``context.metrics`` as ``ts_handler_<method>``."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def _profiling(handler: Any) -> bool:
    context = getattr(handler, "context", None)
    config = getattr(context, "model_yaml_config", None) or {}
    section = config.get("handler") if isinstance(config, dict) else None
    return isinstance(section, dict) and bool(section.get("profile"))


def timed(func: F) -> F:
    @wraps(func)
    def wrap_func(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _profiling(self):
            return func(self, *args, **kwargs)
        start = time.perf_counter()
        result = func(self, *args, **kwargs)
        self.context.metrics.add_time("ts_handler_" + func.__name__, (time.perf_counter() - start) * 1000.0)
        return result

    return wrap_func  # type: ignore[return-value]
