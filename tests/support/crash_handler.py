"""Test handler: a body of b"crash" kills the worker with SIGKILL; anything else answers with the pid."""

import os
import signal
from typing import Any

from modelserve.handler import BaseHandler, Context


class CrashHandler(BaseHandler):
    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        for item in data:
            if item.get("body") == b"crash":
                os.kill(os.getpid(), signal.SIGKILL)
            if item.get("body") == b"raise":
                raise RuntimeError("the handler raised on purpose")
            if item.get("body") == b"oom":
                raise MemoryError("cannot allocate the tensor")
        return [{"pid": os.getpid()} for _ in data]
