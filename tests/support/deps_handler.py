"""Test handler: needs the package ``tinydep``, which only the archive's requirements file provides."""

from typing import Any

from modelserve.handler import BaseHandler, Context


class DepsHandler(BaseHandler):
    def initialize(self, context: Context) -> None:
        import tinydep  # type: ignore[import-not-found]  # installed per model, never in the server's environment

        self.value = tinydep.VALUE
        self.location = tinydep.__file__
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        return [{"value": self.value, "location": self.location} for _ in data]
