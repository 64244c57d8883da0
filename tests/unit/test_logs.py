"""The server's log handler: lines buffered on the event loop and flushed by a timer, warnings at once."""

from __future__ import annotations

import asyncio
import io
import logging
import time

from modelserve.logs import DeferredFlushHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


def make_logger(stream: CountingStream) -> logging.Logger:
    logger = logging.getLogger(f"test.deferred.{id(stream)}")
    logger.propagate = False
    logger.handlers[:] = [DeferredFlushHandler(stream)]
    logger.setLevel(logging.INFO)
    return logger


def test_lines_on_the_loop_are_flushed_once_by_the_timer() -> None:
    stream = CountingStream()
    logger = make_logger(stream)

    async def burst() -> int:
        for i in range(100):
            logger.info("line %d", i)
        flushed_during_burst = stream.flushes
        deadline = time.monotonic() + 5
        while stream.flushes == flushed_during_burst and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return flushed_during_burst

    assert asyncio.run(burst()) == 0
    assert stream.flushes == 1
    assert stream.getvalue().splitlines() == [f"line {i}" for i in range(100)]


def test_warnings_and_lines_off_the_loop_are_flushed_at_once() -> None:
    stream = CountingStream()
    logger = make_logger(stream)
    logger.info("no loop here")
    assert stream.flushes == 1

    async def warn() -> int:
        logger.warning("trouble")
        return stream.flushes

    assert asyncio.run(warn()) == 2
