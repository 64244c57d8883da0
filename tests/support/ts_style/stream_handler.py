"""A handler that sends parts of its answer before the final one (send_intermediate_predict_response)."""

from typing import Any

from ts.handler_utils.utils import send_intermediate_predict_response


class StreamHandler:
    def initialize(self, context: Any) -> None:
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        for step in range(2):
            send_intermediate_predict_response(
                [f"part {step};" for _ in data], context.request_ids, "Intermediate Prediction success", 200, context
            )
        return ["done" for _ in data]
