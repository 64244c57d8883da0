"""Test handler: explains or predicts as the request's ``explain`` header says, the way TorchServe's frontend asks.

Each answer names what was done and the headers it saw, so tests can tell which route set what.
"""

from typing import Any

from modelserve.handler import BaseHandler, Context


class ExplainHandler(BaseHandler):
    def handle(self, data: list[dict[str, Any]], context: Context) -> list[Any]:
        answers: list[Any] = []
        for index, item in enumerate(data):
            explain = context.get_request_header(index, "explain")
            url_path = context.get_request_header(index, "url_path")
            body = item.get("body")
            if isinstance(body, dict) and isinstance(body.get("instances"), list):  # KServe v1: one per instance
                kind = "explanation" if explain == "True" else "prediction"
                answers.append([{kind: instance, "explain": explain} for instance in body["instances"]])
                continue
            answers.append({
                "did": "explain" if explain == "True" else "predict",
                "explain": explain,
                "url_path": url_path,
                "fields": sorted(k for k in item if k not in ("body", "data")),
            })  # fmt: skip
        return answers
