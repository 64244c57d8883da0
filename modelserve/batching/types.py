"""What a request is and what it becomes, as the batcher, the workers and every protocol see it.

The bottom layer: it imports nothing of modelserve, and everything above (workers, models, server) may import it.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field

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


@dataclass
class InferResult:
    status: int
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
