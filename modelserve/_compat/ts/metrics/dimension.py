"""TorchServe's ``Dimension``: a name and a value; on ``/metrics`` it is a label of the handler's metric."""

from __future__ import annotations

from typing import Any


class Dimension:
    def __init__(self, name: str, value: Any) -> None:
        self.name = name
        self.value = value

    def __str__(self) -> str:
        return f"{self.name}:{self.value}"

    def __repr__(self) -> str:
        return f"Dimension({self.name!r}, {self.value!r})"

    def to_dict(self) -> dict[str, Any]:
        return {"Name": self.name, "Value": self.value}
