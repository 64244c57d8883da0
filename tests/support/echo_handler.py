"""Test handler: returns each request's body unchanged (JSON bodies come back as JSON)."""

from typing import Any

from modelserve.handler import BaseHandler, Context


class EchoHandler(BaseHandler):
    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        return [item.get("body") for item in data]
