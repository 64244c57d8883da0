"""modelserve handler for the streaming benchmark: each request's answer is a stream of small pieces, each carrying the
``time.monotonic_ns()`` taken right before it is yielded (CLOCK_MONOTONIC: the same clock in every process of the
machine, so a client can tell how long a piece took from the handler to it).

How many pieces (default 100): the request body as a number (``/predictions``, TorchServe's gRPC ``input`` field
``data``), or the first value of an Open Inference Protocol input (``ModelStreamInfer``). The pieces are
``b"<index> <monotonic ns>\\n"`` lines, or for the Open Inference Protocol one INT64 tensor ``piece`` = [index, ns].
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from modelserve.handler import BadInputError, BaseHandler

PIECES = 100
LIMIT = 100_000


def lines(count: int) -> Iterator[bytes]:
    for index in range(count):
        now = time.monotonic_ns()
        yield b"%d %d\n" % (index, now)


def tensors(count: int) -> Iterator[dict[str, np.ndarray]]:
    for index in range(count):
        now = time.monotonic_ns()
        yield {"piece": np.array([index, now], dtype=np.int64)}


class StreamPieces(BaseHandler):
    def signature(self) -> dict[str, Any]:
        return {
            "inputs": [{"name": "count", "datatype": "INT32", "shape": [1]}],
            "outputs": [{"name": "piece", "datatype": "INT64", "shape": [2]}],
        }

    def _count(self, item: dict[str, Any]) -> tuple[int, bool]:
        if "oip" in item:
            values = list(item["data"]["inputs"].values())
            count = int(np.asarray(values[0]).reshape(-1)[0]) if values else PIECES
            return count, True
        body = item.get("data", item.get("body"))
        if isinstance(body, (bytes, bytearray)):
            body = bytes(body).strip() or PIECES
        try:
            count = int(body) if body is not None else PIECES
        except (TypeError, ValueError):
            raise BadInputError("send the number of pieces, or nothing for 100") from None
        return count, False

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        answers: list[Any] = []
        for item in data:
            count, typed = self._count(item)
            if not 0 < count <= LIMIT:
                raise BadInputError(f"between 1 and {LIMIT} pieces")
            answers.append(tensors(count) if typed else lines(count))
        return answers
