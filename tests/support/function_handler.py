"""Test handler in module:function form; TorchServe calls it once with data=None to initialize."""

from typing import Any

from modelserve.handler import Context

STATE: dict[str, Any] = {}


def handle(data: list[dict[str, Any]] | None, context: Context) -> list[Any] | None:
    if data is None:
        STATE["initialized"] = True
        return None
    return [{"initialized": STATE.get("initialized", False), "model": context.model_name} for _ in data]
