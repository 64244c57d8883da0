"""Test handler: the body chooses the outcome: b"400" -> bad input, b"500" -> raises, anything else -> 200."""

import logging
from typing import Any

from modelserve.handler import BadInputError, BaseHandler, Context


class OutcomeHandler(BaseHandler):
    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        print(f"handling {len(data)} request(s)")  # goes to the server log with the worker's prefix
        logging.getLogger("outcome").info("logged through the worker's logging")  # keeps its INFO level
        for item in data:
            if item["body"] == b"400":
                raise BadInputError("the input was bad on purpose")
            if item["body"] == b"500":
                raise RuntimeError("the handler failed on purpose")
        context.metrics.add_counter("widgets", 2, {"color": "red"}, "widgets the handler made")
        context.metrics.set_gauge("temperature", 21.5)
        return ["ok" for _ in data]
