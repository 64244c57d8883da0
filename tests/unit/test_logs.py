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


def _default_setup(stream: CountingStream) -> tuple[DeferredFlushHandler, list[logging.Handler], int]:
    """Logging as configure_logging leaves it by default, on ``stream``; returns what to restore."""
    from modelserve.logs import PLAIN_FORMAT

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    handler = DeferredFlushHandler(stream)
    handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    return handler, saved[0], saved[1]


def test_plain_lines_write_exactly_what_the_default_formatter_would() -> None:
    from modelserve.logs import PlainLines

    stream = CountingStream()
    handler, old_handlers, old_level = _default_setup(stream)
    logger = logging.getLogger("test.plainlines.access")
    try:
        lines = PlainLines.for_logger(logger)
        assert lines is not None
        created = [1_700_000_000.0015, 1_700_000_000.9999, 1_700_000_001.25]
        for when in created:
            lines.write(when, "abc m 1.0 POST 200 1.23ms")
        handler.flush()
        expected = []
        for when in created:
            record = logger.makeRecord(
                logger.name, logging.INFO, __file__, 0, "%s", ("abc m 1.0 POST 200 1.23ms",), None
            )
            record.created = when
            record.msecs = int((when - int(when)) * 1000) + 0.0
            expected.append(handler.format(record))
        assert stream.getvalue().splitlines() == expected
    finally:
        logging.getLogger().handlers[:] = old_handlers
        logging.getLogger().setLevel(old_level)


def test_plain_lines_step_aside_for_any_other_setup() -> None:
    from modelserve.logs import JsonFormatter, PlainLines

    stream = CountingStream()
    handler, old_handlers, old_level = _default_setup(stream)
    logger = logging.getLogger("test.plainlines.other")
    try:
        assert PlainLines.for_logger(logger) is not None
        logger.addFilter(lambda record: True)
        assert PlainLines.for_logger(logger) is None  # a filter must see every record
        logger.filters.clear()
        logger.setLevel(logging.WARNING)
        assert PlainLines.for_logger(logger) is None  # INFO is off
        logger.setLevel(logging.NOTSET)
        handler.setFormatter(JsonFormatter())
        assert PlainLines.for_logger(logger) is None  # JSON lines go through the formatter
    finally:
        logging.getLogger().handlers[:] = old_handlers
        logging.getLogger().setLevel(old_level)
