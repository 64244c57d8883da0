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
from typing import Any, ClassVar, TypeVar

from modelserve.batching.types import InferRequest, InferResult

PREFIX = struct.Struct("!IBI")  # frame length, message type, header length
LENGTH = struct.Struct("!I")
_HEADER_JSON = json.JSONEncoder(separators=(",", ":"))  # one encoder for every frame, not one per call
MAX_FRAME_BYTES = (1 << 32) - 1
# pieces of one stream a worker may send ahead of what the parent's reader has taken (it starts with this credit)
STREAM_WINDOW = 8


_M = TypeVar("_M", bound="Message")


class ProtocolError(Exception):
    """A frame that does not decode: the peer is broken or not speaking this protocol."""


class MessageType(enum.IntEnum):
    INIT = 1
    READY = 2
    LOAD_FAILED = 3
    INFER = 4
    RESULT = 5
    SHUTDOWN = 6
    STREAM_PIECE = 7
    STREAM_END = 8
    CREDIT = 9
    CANCEL = 10


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
    # positions of the requests answered by a stream (their results here are placeholders: the stream frames answer)
    streamed: list[int] = field(default_factory=list)

    def header(self) -> dict[str, Any]:
        header = {
            "batch_id": self.batch_id,
            "results": [
                {"status": r.status, "content_type": r.content_type, "headers": r.headers} for r in self.results
            ],
            "timings": self.timings,
            "metrics": self.metrics,
        }
        if self.streamed:
            header["streamed"] = self.streamed
        return header

    def blobs(self) -> list[bytes]:
        return [r.body for r in self.results]


@dataclass
class ShutdownMessage(Message):
    TYPE: ClassVar[MessageType] = MessageType.SHUTDOWN


@dataclass
class StreamHead:
    """The status, content type and headers of a streamed response, sent with the stream's first frame."""

    status: int
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamPieceMessage(Message):
    """Worker -> parent: one piece of the streamed answer to request ``index`` of batch ``batch_id``.

    The first frame of a stream (piece or end) carries its ``head``. A worker sends a piece only while it has credit.
    ``headers`` are the piece's own, from its codec (an Open Inference Protocol piece with binary tensors says where
    its JSON ends), not the response's.
    """

    TYPE: ClassVar[MessageType] = MessageType.STREAM_PIECE
    batch_id: int
    index: int
    body: bytes = b""
    head: StreamHead | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def header(self) -> dict[str, Any]:
        header: dict[str, Any] = {"batch_id": self.batch_id, "index": self.index}
        if self.head is not None:
            header["head"] = asdict(self.head)
        if self.headers:
            header["headers"] = self.headers
        return header

    def blobs(self) -> list[bytes]:
        return [self.body]


@dataclass
class StreamEndMessage(Message):
    """Worker -> parent: request ``index``'s stream is over: cleanly (``error`` empty), with a handler error
    (``status`` and ``error``), or because the parent cancelled it. The worker holds nothing of it any more."""

    TYPE: ClassVar[MessageType] = MessageType.STREAM_END
    batch_id: int
    index: int
    status: int = 200
    error: str = ""
    head: StreamHead | None = None

    def header(self) -> dict[str, Any]:
        header: dict[str, Any] = {"batch_id": self.batch_id, "index": self.index, "status": self.status}
        if self.error:
            header["error"] = self.error
        if self.head is not None:
            header["head"] = asdict(self.head)
        return header


@dataclass
class CreditMessage(Message):
    """Parent -> worker: request ``index``'s reader took pieces; the worker may send ``count`` more."""

    TYPE: ClassVar[MessageType] = MessageType.CREDIT
    batch_id: int
    index: int
    count: int


@dataclass
class CancelMessage(Message):
    """Parent -> worker: request ``index``'s client left; close its generator and end the stream."""

    TYPE: ClassVar[MessageType] = MessageType.CANCEL
    batch_id: int
    index: int


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
            streamed=[_integer(i) for i in header.get("streamed", [])],
        )
    if kind is MessageType.STREAM_PIECE:
        (body,) = blobs
        piece = _checked(StreamPieceMessage(body=body, head=_head(header.pop("head", None)), **header))
        if not isinstance(piece.headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in piece.headers.items()
        ):
            raise ProtocolError("a stream piece's headers map strings to strings")
        return piece
    if kind is MessageType.STREAM_END:
        if blobs:
            raise ProtocolError("a stream end carries no body")
        end = _checked(StreamEndMessage(head=_head(header.pop("head", None)), **header))
        if not isinstance(end.status, int) or not isinstance(end.error, str):
            raise ProtocolError("a stream end has a status and an error message")
        return end
    classes: dict[MessageType, type[Message]] = {
        MessageType.INIT: InitMessage,
        MessageType.READY: ReadyMessage,
        MessageType.LOAD_FAILED: LoadFailedMessage,
        MessageType.SHUTDOWN: ShutdownMessage,
        MessageType.CREDIT: CreditMessage,
        MessageType.CANCEL: CancelMessage,
    }
    return _checked(classes[kind](**header))


def _checked(message: _M) -> _M:
    """``message`` once its stream positions and counts are integers (a frame's JSON could hold anything)."""
    for name in ("batch_id", "index", "count"):
        if hasattr(message, name):
            _integer(getattr(message, name))
    return message


def _integer(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"expected a non-negative integer, got {value!r}")
    return value


def _head(raw: Any) -> StreamHead | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ProtocolError("a stream head is an object")
    head = StreamHead(**raw)
    if not isinstance(head.status, int) or not isinstance(head.content_type, str) or not isinstance(head.headers, dict):
        raise ProtocolError("a stream head has a status, a content type and headers")
    return head
