"""Test handler: a subclass of a handler that declares ``default_batch_size``, declaring none of its own, so it keeps
batch 1 (a subclass may read only the first request of a batch)."""

from typing import Any

from modelserve.handler import BaseHandler, Context


class Declaring(BaseHandler):
    default_batch_size = 4


class Inheriting(Declaring):
    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        return [{"batch_size": len(data), "announced": context.system_properties["batch_size"]} for _ in data]
