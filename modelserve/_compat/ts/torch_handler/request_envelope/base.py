"""The envelope contract: ``parse_input`` before the wrapped ``handle``, ``format_output`` after it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from modelserve import safejson
from modelserve.handler import BadInputError

HandleFunction = Callable[[Any, Any], Any]


def json_body(raw: bytes | bytearray) -> Any:
    """A request body that was not sent as JSON, read as JSON: a 400 naming the problem when it is not JSON."""
    try:
        return safejson.loads(bytes(raw))
    except safejson.JSONInputError as exc:
        raise BadInputError(f"request body is not valid JSON: {exc}") from None


class BaseEnvelope(ABC):
    def __init__(self, handle_fn: HandleFunction) -> None:
        self._handle_fn = handle_fn
        self.context: Any = None

    def handle(self, data: Any, context: Any) -> Any:
        self.context = context
        if data:
            data = self.parse_input(data)
        results = self._handle_fn(data, context)
        if results:
            results = self.format_output(results)
        return results

    @abstractmethod
    def parse_input(self, data: Any) -> Any: ...

    @abstractmethod
    def format_output(self, data: Any) -> Any: ...

    def _is_explain(self) -> bool:
        context = self.context
        return bool(context is not None and context.get_request_header(0, "explain") == "True")
