"""Test handler: returns one result too many."""

from typing import Any

from modelserve.handler import BaseHandler, Context


class WrongLengthHandler(BaseHandler):
    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        return [1] * (len(data) + 1)
