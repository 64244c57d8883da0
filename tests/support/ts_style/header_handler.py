"""A handler that reads request headers and sets response headers, content type and status through the context."""

import json
from typing import Any

from ts.torch_handler.base_handler import BaseHandler


class HeaderHandler(BaseHandler):
    def initialize(self, context: Any) -> None:
        self.context = context
        self.initialized = True  # no model: this handler only computes

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        results = []
        for idx, row in enumerate(data):
            body = row.get("data") or row.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = body.decode("utf-8")
            scale = float(context.get_request_header(idx, "X-Scale") or 1)
            context.set_response_header(idx, "X-Model", context.model_name)
            context.set_response_content_type(idx, "application/json")
            context.set_response_status(201, "Created", idx)
            results.append(json.dumps({"length": len(str(body)) * scale, "model": context.model_name}))
        return results
