"""The parent <-> worker wire protocol: typed messages in length-prefixed frames.

Frame: ``u32 length`` (of everything after it), ``u8 message type``, ``u32 header length``, a JSON header, then the
raw byte blobs the header lists (request and response bodies travel as bytes, never pickled, never re-encoded).
This module imports neither torch nor numpy, and knows nothing of sockets beyond bytes.
"""

from __future__ import annotations

import enum
import json
import struct
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from modelserve.batching.types import InferRequest, InferResult

PREFIX = struct.Struct("!IBI")  # frame length, message type, header length
LENGTH = struct.Struct("!I")
_HEADER_JSON = json.JSONEncoder(separators=(",", ":"))  # one encoder for every frame, not one per call
MAX_FRAME_BYTES = (1 << 32) - 1


class ProtocolError(Exception):
    """A frame that does not decode: the peer is broken or not speaking this protocol."""


class MessageType(enum.IntEnum):
    INIT = 1
    READY = 2
    LOAD_FAILED = 3
    INFER = 4
    RESULT = 5
    SHUTDOWN = 6


@dataclass
class Message:
    TYPE: ClassVar[MessageType]

    def header(self) -> dict[str, Any]:
        return asdict(self)

    def blobs(self) -> list[bytes]:
        return []


@dataclass
class InitMessage(Message):
    """Parent -> worker, first frame: what to load."""

    TYPE: ClassVar[MessageType] = MessageType.INIT
    model_name: str
    model_version: str
    model_dir: str
    handler: str
    manifest: dict[str, Any]
    model_config: dict[str, Any]
    batch_size: int
    intra_op_threads: int
    worker_id: str
    python_path: list[str] = field(default_factory=list)  # directories put first on sys.path (per-model deps)
    envelope: str = ""  # a TorchServe request envelope to wrap the handler in (service_envelope)
    # batch_size is the server's default, not a setting: a handler that declares a batch size gets that one instead
    batch_size_auto: bool = False


@dataclass
class ReadyMessage(Message):
    """Worker -> parent: the handler initialized; ``signature`` lists the model's inputs and outputs if known;
    ``batch_size`` is the one the handler declared when the init left it to the handler (0: none declared)."""

    TYPE: ClassVar[MessageType] = MessageType.READY
    pid: int
    signature: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 0


@dataclass
class LoadFailedMessage(Message):
    """Worker -> parent: loading or initializing the handler failed; the worker exits after sending this."""

    TYPE: ClassVar[MessageType] = MessageType.LOAD_FAILED
    error: str


@dataclass
class InferMessage(Message):
    """Parent -> worker: one batch."""

    TYPE: ClassVar[MessageType] = MessageType.INFER
    batch_id: int
    requests: list[InferRequest]

    def header(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "requests": [
                {
                    "request_id": r.request_id,
                    "content_type": r.content_type,
                    "headers": r.headers,
                    "protocol": r.protocol,
                }
                for r in self.requests
            ],
        }

    def blobs(self) -> list[bytes]:
        return [r.body for r in self.requests]


@dataclass
class ResultMessage(Message):
    """Worker -> parent: one result per request of the batch, plus timings and handler metrics."""

    TYPE: ClassVar[MessageType] = MessageType.RESULT
    batch_id: int
    results: list[InferResult]
    timings: dict[str, float] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def header(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "results": [
                {"status": r.status, "content_type": r.content_type, "headers": r.headers} for r in self.results
            ],
            "timings": self.timings,
            "metrics": self.metrics,
        }

    def blobs(self) -> list[bytes]:
        return [r.body for r in self.results]


@dataclass
class ShutdownMessage(Message):
    TYPE: ClassVar[MessageType] = MessageType.SHUTDOWN


def encode(message: Message) -> list[bytes]:
    """The frame as a list of buffers, to be written with one ``writelines``/``sendmsg`` (no join copy)."""
    blobs = message.blobs()
    header = message.header()
    sizes = header["blob_sizes"] = [len(b) for b in blobs]
    raw_header = _HEADER_JSON.encode(header).encode()
    total = PREFIX.size - LENGTH.size + len(raw_header) + sum(sizes)
    if total > MAX_FRAME_BYTES:
        raise ProtocolError(f"frame of {total} bytes exceeds the protocol limit")
    return [PREFIX.pack(total, message.TYPE, len(raw_header)), raw_header, *blobs]


_MESSAGE_TYPES = {kind.value: kind for kind in MessageType}


def decode(message_type: int, payload: memoryview | bytes) -> Message:
    """Decode the part of a frame after its length prefix (type byte included)."""
    view = memoryview(payload)
    try:
        kind = _MESSAGE_TYPES[message_type]  # a dict: calling the enum costs more than the rest of a small frame
        (header_length,) = LENGTH.unpack_from(view, 0)
        header = json.loads(bytes(view[LENGTH.size : LENGTH.size + header_length]).decode())
        offset = LENGTH.size + header_length
        blobs: list[bytes] = []
        for size in header.pop("blob_sizes", []):
            blobs.append(bytes(view[offset : offset + size]))
            offset += size
        if offset != len(view):
            raise ProtocolError(f"frame length mismatch ({offset} != {len(view)})")
        return _build(kind, header, blobs)
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from None


def _build(kind: MessageType, header: dict[str, Any], blobs: list[bytes]) -> Message:
    if kind is MessageType.INFER:
        requests = [InferRequest(body=blob, **item) for item, blob in zip(header["requests"], blobs, strict=True)]
        return InferMessage(batch_id=header["batch_id"], requests=requests)
    if kind is MessageType.RESULT:
        results = [InferResult(body=blob, **item) for item, blob in zip(header["results"], blobs, strict=True)]
        return ResultMessage(
            batch_id=header["batch_id"],
            results=results,
            timings=header.get("timings", {}),
            metrics=header.get("metrics", []),
        )
    classes: dict[MessageType, type[Message]] = {
        MessageType.INIT: InitMessage,
        MessageType.READY: ReadyMessage,
        MessageType.LOAD_FAILED: LoadFailedMessage,
        MessageType.SHUTDOWN: ShutdownMessage,
    }
    return classes[kind](**header)
