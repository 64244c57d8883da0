"""Test handler for hostile-input tests: Open Inference Protocol requests get their first input back as ``output_0``
(a handler that does not know the model's output names); a body of b"nan" answers a NaN; b"die" raises an exception
no guard catches (a BaseException), so the worker dies; anything else answers with the worker's pid.

It loads nothing: archived with a ``.pt`` serialized file, its workers are forked from the torch template."""

import os
from typing import Any

from modelserve.handler import BaseHandler, Context


class WorkerDeath(BaseException):
    """Escapes every ``except Exception``: the worker process ends."""


class HostileHandler(BaseHandler):
    def initialize(self, context: Context) -> None:
        self.context = context
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        results: list[Any] = []
        for item in data:
            if "oip" in item:
                results.append({"output_0": next(iter(item["data"]["inputs"].values()))})
            elif item.get("body") == b"die":
                raise WorkerDeath("the handler ended the worker on purpose")
            elif item.get("body") == b"nan":
                results.append({"score": float("nan"), "bounds": [float("-inf"), float("inf")]})
            else:
                results.append({"pid": os.getpid()})
        return results
