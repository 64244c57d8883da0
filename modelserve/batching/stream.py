"""A streamed answer as its reader sees it: pieces in order, with credit-based flow control toward the producer.

Transport-neutral: the producer (the worker channel) ``put``s pieces and ``end``s the stream; the reader (the HTTP
relay, or any other front end) iterates it. Every ``credit_every`` pieces the reader takes, ``grant`` is called with
that count, so the producer may send that many more: with a window of W pieces granted at the start, at most W
pieces are ever between the producer and the reader. ``cancel`` tells the producer to stop (``on_cancel``, once).
``abandon`` is for a reader that stopped reading altogether (its client neither reads nor leaves): the stream is
cancelled and the task reading it is cancelled too, wherever it waits (typically in a write to that client).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

from modelserve.batching.types import ERROR_CONTENT_TYPE, InferResult


def _nothing(*_: object) -> None:
    return None


class PieceStream:
    """An implementation of :class:`~modelserve.batching.types.ResultStream` fed by ``put`` and ``end``."""

    def __init__(
        self,
        window: int,
        grant: Callable[[int], None] = _nothing,
        on_cancel: Callable[[], None] = _nothing,
    ) -> None:
        self.window = window
        self.credit_every = max(window // 2, 1)
        self._grant = grant
        self._on_cancel = on_cancel
        self._pieces: deque[InferResult] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.ended = False  # the producer sent its last piece (or an error)
        self.cancelled = False
        self.received = 0  # pieces put
        self.taken = 0  # pieces the reader took
        self._ungranted = 0  # taken since the last grant
        self.read_at = time.monotonic()  # when the reader last took a piece (or the stream opened)
        self._reader: asyncio.Task[object] | None = None  # the task that reads the stream

    # ---- producer side ------------------------------------------------------------------------------------------
    def put(self, piece: InferResult) -> None:
        if self.ended or self.cancelled:
            return
        self.received += 1
        self._pieces.append(piece)
        self._wake()

    def end(self, error: InferResult | None = None) -> None:
        """The last piece came; ``error`` (an ``ERROR_CONTENT_TYPE`` result) is read as the stream's final piece."""
        if self.ended:
            return
        if error is not None and not self.cancelled:
            self._pieces.append(error)
        self.ended = True
        self._wake()

    @property
    def blocked(self) -> bool:
        """The producer has used all its credit: it waits for the reader, not the other way round."""
        return self.received >= self.window + self.taken - self._ungranted

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---- reader side --------------------------------------------------------------------------------------------
    def __aiter__(self) -> AsyncIterator[InferResult]:
        return self

    async def __anext__(self) -> InferResult:
        if self._reader is None:
            self._reader = asyncio.current_task()
        while not self._pieces:
            if self.ended or self.cancelled:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        piece = self._pieces.popleft()
        if piece.content_type == ERROR_CONTENT_TYPE:
            self._pieces.clear()
            self.ended = True
            return piece
        self.taken += 1
        self.read_at = time.monotonic()
        self._ungranted += 1
        if self._ungranted >= self.credit_every and not self.ended:
            count, self._ungranted = self._ungranted, 0
            self._grant(count)
        return piece

    def cancel(self) -> None:
        """Stop the rest of the stream at the producer; pieces not yet read are dropped. Safe to repeat."""
        if self.cancelled or self.ended:
            self.cancelled = True
            self._pieces.clear()
            self._wake()
            return
        self.cancelled = True
        self._pieces.clear()
        self._wake()
        self._on_cancel()

    def abandon(self) -> None:
        """The reader took nothing for too long: stop the stream at the producer and cancel the reading task."""
        self.cancel()
        reader = self._reader
        if reader is not None and not reader.done() and reader is not asyncio.current_task():
            reader.cancel()
