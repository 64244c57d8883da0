"""The parent's reading side of one worker's frames, whatever carries the bytes (a socket, a cluster's calls).

``FrameSplitter`` cuts a byte stream into whole frames. ``FrameRouter`` decodes each and routes it: the worker's
first frame (ready or load failed) to the future ``start`` waits on, stream frames and replies to the handle's
``WorkerEvents``, and anything else reports the worker broken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from modelserve.errors import WorkerDiedError, WorkerLoadError
from modelserve.workers.backend import WorkerEvents
from modelserve.workers.protocol import (
    LENGTH,
    LoadFailedMessage,
    Message,
    ProtocolError,
    ReadyMessage,
    ResultMessage,
    StreamEndMessage,
    StreamPieceMessage,
    decode,
)


class FrameSplitter:
    """Bytes in, whole frames (type byte and body, without the length) out, in the call that completed them."""

    def __init__(self, on_frame: Callable[[bytes], None]) -> None:
        self._buffer = bytearray()
        self._on_frame = on_frame

    def feed(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while len(buffer) - start >= LENGTH.size:
            (length,) = LENGTH.unpack_from(buffer, start)
            end = start + LENGTH.size + length
            if len(buffer) < end:
                break
            frame = bytes(buffer[start + LENGTH.size : end])
            start = end
            self._on_frame(frame)
        if start:
            del buffer[:start]


class FrameRouter:
    """Routes a worker's decoded frames; ``on_broken`` is told when the worker breaks the protocol."""

    def __init__(self, on_broken: Callable[[str], None]) -> None:
        self.events: WorkerEvents | None = None
        self.first: asyncio.Future[Message] | None = None  # the worker's first frame (ready or load failed)
        self._on_broken = on_broken

    def expect_first(self) -> asyncio.Future[Message]:
        self.first = asyncio.get_running_loop().create_future()
        return self.first

    def fail_first(self, error: BaseException) -> None:
        """The worker went before its first frame: ``start`` raises ``error``."""
        if self.first is not None and not self.first.done():
            self.first.set_exception(error)
            self.first.exception()  # retrieved: nobody may be waiting any more

    def on_frame(self, frame: bytes) -> None:
        """One whole frame from the worker: its first message, a stream's frame, or the oldest batch's reply."""
        try:
            message = decode(frame[0], memoryview(frame)[1:])
        except ProtocolError as exc:
            self._on_broken(f"worker sent a broken frame ({exc})")
            return
        if self.first is not None and not self.first.done():
            self.first.set_result(message)
            return
        if isinstance(message, (StreamPieceMessage, StreamEndMessage)):
            if self.events is not None:
                self.events.on_stream(message)
            return
        if not isinstance(message, ResultMessage):
            self._on_broken(f"worker sent an unexpected {type(message).__name__}")
            return
        if self.events is not None:
            self.events.on_reply(message)

    def lost(self, error: WorkerDiedError) -> None:
        self.fail_first(error)
        if self.events is not None:
            self.events.on_lost(error)


async def await_ready(
    first: asyncio.Future[Message], timeout_s: float, limit_s: float, kill: Callable[[], Awaitable[None]]
) -> ReadyMessage:
    """Wait up to ``timeout_s`` for the worker's first frame and return it as READY; otherwise kill the worker and
    raise WorkerLoadError saying why (``limit_s`` is the startup timeout the message names)."""
    try:
        reply = await asyncio.wait_for(asyncio.shield(first), timeout_s)
        return ready_reply(reply)
    except TimeoutError:
        await kill()
        raise WorkerLoadError(f"worker did not finish loading within {limit_s:g} s") from None
    except WorkerDiedError as exc:
        await kill()
        raise WorkerLoadError(f"worker exited while loading ({exc})") from None
    except WorkerLoadError:
        await kill()
        raise


def ready_reply(reply: Message) -> ReadyMessage:
    """The worker's first frame as READY; WorkerLoadError with the worker's words when it failed to load."""
    if isinstance(reply, LoadFailedMessage):
        raise WorkerLoadError(reply.error)
    if not isinstance(reply, ReadyMessage):
        raise WorkerLoadError(f"unexpected first reply {type(reply).__name__}")
    return reply
