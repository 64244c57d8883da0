"""What a request is and what it becomes, as the batcher, the workers and every protocol see it.

The bottom layer: it imports nothing of modelserve, and everything above (workers, models, server) may import it.
"""

from __future__ import annotations

import enum
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol as TypingProtocol

# content type of a result that carries an error message rather than a handler's output
ERROR_CONTENT_TYPE = "application/x-modelserve-error"


def new_request_id() -> str:
    """A fresh request id: 32 random hex digits (as unguessable as a uuid4, for a tenth of its cost)."""
    return os.urandom(16).hex()


class Protocol(str, enum.Enum):
    """How a request's body is to be read and its result written."""

    TORCHSERVE = "ts"  # /predictions: raw, JSON or multipart in; bytes, text or JSON out
    KSERVE_V1 = "v1"  # {"instances": [...]} in, {"predictions": [...]} out
    OIP_V2 = "v2"  # Open Inference Protocol tensors, JSON or binary


@dataclass
class InferRequest:
    request_id: str
    content_type: str
    headers: dict[str, str]
    body: bytes = b""
    protocol: str = Protocol.TORCHSERVE.value


class ResultStream(TypingProtocol):
    """The pieces of a streamed answer, in order, as they arrive from the worker.

    Each piece is an :class:`InferResult` encoded by the request's codec (status 200); a piece whose content type is
    ``ERROR_CONTENT_TYPE`` ends the stream with that error (a handler error mid-stream). Iteration ends after the last
    piece. ``cancel`` stops the rest of the stream in the worker (the client left); it is safe to call at any time
    and more than once. Taking pieces is what lets the worker send more: a reader that stops taking pauses the
    worker, whose buffer stays bounded.
    """

    def __aiter__(self) -> AsyncIterator[InferResult]: ...

    def cancel(self) -> None: ...


@dataclass
class InferResult:
    status: int
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # a streamed answer: ``status``, ``content_type`` and ``headers`` are those of the whole response, ``body`` is
    # empty, and the pieces come from ``stream``
    stream: ResultStream | None = None
