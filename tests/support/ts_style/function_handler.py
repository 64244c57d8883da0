"""A module-level handle(data, context) around a handler object, initialized on first call (TorchServe's docs),
plus a second entry point for the ``file.py:function`` form."""

from typing import Any

from ts.torch_handler.base_handler import BaseHandler


class _Doubler(BaseHandler):
    def initialize(self, context: Any) -> None:
        self.context = context
        self.initialized = True


_service = _Doubler()


def _values(data: list[dict[str, Any]]) -> list[str]:
    out = []
    for row in data:
        value = row.get("data") or row.get("body")
        if isinstance(value, (bytes, bytearray)):
            value = value.decode("utf-8")
        out.append(str(value))
    return out


def handle(data: Any, context: Any) -> Any:
    if not _service.initialized:
        _service.initialize(context)
    if data is None:
        return None
    return [value * 2 for value in _values(data)]


def shout(data: Any, context: Any) -> Any:
    if data is None:
        return None
    return [value.upper() for value in _values(data)]
