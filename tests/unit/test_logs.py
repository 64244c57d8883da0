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
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

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
    assert stream.writes == 1, "one write for the whole burst, whatever the stream's own buffering"
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
    assert stream.getvalue().splitlines() == ["no loop here", "trouble"]


def test_a_warning_writes_the_lines_before_it_first_and_shutdown_writes_the_rest() -> None:
    stream = CountingStream()
    logger = make_logger(stream)

    async def mixed() -> list[str]:
        logger.info("first")
        logger.warning("second")
        logger.info("third")
        return stream.getvalue().splitlines()

    assert asyncio.run(mixed()) == ["first", "second"]
    logger.handlers[0].flush()  # what logging.shutdown does at exit, before the timer had its turn
    assert stream.getvalue().splitlines() == ["first", "second", "third"]

    async def later() -> None:  # a new loop arms its own timer
        logger.info("fourth")
        deadline = time.monotonic() + 5
        while "fourth" not in stream.getvalue() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    asyncio.run(later())
    assert stream.getvalue().splitlines()[-1] == "fourth"
