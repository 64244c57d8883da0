"""TorchServe's documented custom-service form: a class with initialize and handle and no base class."""

from typing import Any


class PlainHandler:
    def __init__(self) -> None:
        self.initialized = False
        self.greeting = ""

    def initialize(self, context: Any) -> None:
        section = (context.model_yaml_config or {}).get("handler", {})
        self.greeting = section.get("greeting", "hello")
        self.model_dir = context.system_properties.get("model_dir")
        self.initialized = True

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        out = []
        for row in data:
            text = row.get("data") or row.get("body")
            if isinstance(text, (bytes, bytearray)):
                text = text.decode("utf-8")
            out.append(f"{self.greeting}, {text}")
        return out
