"""Test handler: sleeps for the number of seconds in the body (default 0.2), then answers with the pid."""

import os
import time
from typing import Any

from modelserve.handler import BaseHandler, Context


class SleepHandler(BaseHandler):
    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        seconds = 0.2
        body = data[0].get("body")
        if isinstance(body, (bytes, bytearray)) and body.strip():
            seconds = float(body)
        time.sleep(seconds)
        return [{"slept": seconds, "pid": os.getpid()} for _ in data]
