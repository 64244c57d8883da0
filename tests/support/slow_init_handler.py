"""Test handler: initialize takes a while (``init_s`` in the handler section, default 2 s), then echoes bodies."""

import time
from typing import Any

from modelserve.handler import BaseHandler, Context


class SlowInitHandler(BaseHandler):
    def initialize(self, context: Context) -> None:
        handler_config = context.model_yaml_config.get("handler") or {}
        time.sleep(float(handler_config.get("init_s", 2.0)))
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        return [item.get("body") for item in data]
