"""Test handler: sets the response header the request body names, as JSON ``{"name": ..., "value": ...}``."""

import json
from typing import Any

from modelserve.handler import BaseHandler, Context


class HeaderHandler(BaseHandler):
    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        for index, item in enumerate(data):
            body = item.get("body")
            wanted = body if isinstance(body, dict) else json.loads(body or b"{}")
            if wanted["name"].lower() == "content-type":
                context.set_response_content_type(index, wanted["value"])
            else:
                context.set_response_header(index, wanted["name"], wanted["value"])
        return ["ok" for _ in data]
