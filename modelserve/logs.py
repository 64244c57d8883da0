"""Logging setup for the server process (done by the CLI, never at import time)."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import yaml


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class DeferredFlushHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that, on the event loop's thread, writes once per ``FLUSH_INTERVAL_S`` instead of per line.

    Under load the server logs one access line per request; a write per line is a system call per request on the
    event loop (every line is one when stdout is unbuffered, as ``PYTHONUNBUFFERED=1`` makes it). Here lines are kept
    by the handler and written together by a timer a moment later (so ``tail -f`` still sees them at once to the
    eye); WARNING and above, and records from other threads, are written with everything before them at once.
    """

    FLUSH_INTERVAL_S = 0.1

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._timer_loop: asyncio.AbstractEventLoop | None = None  # the loop whose timer will write the lines

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._lines.append(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.flush()
                return
            self._write_soon()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def add_line(self, line: str) -> None:
        """A line below WARNING, formatted already (``PlainLines``): kept and written like an emitted record's."""
        self.acquire()  # as emit is, under the handler's lock: a warning from another thread may be flushing
        try:
            self._lines.append(line + self.terminator)
        finally:
            self.release()
        self._write_soon()

    def _write_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        if self._timer_loop is not loop:  # none armed yet, or armed on a loop that has since gone
            self._timer_loop = loop
            loop.call_later(self.FLUSH_INTERVAL_S, self._timed_flush)

    def flush(self) -> None:
        """Write the kept lines in one go, then flush the stream (also what logging.shutdown calls)."""
        self.acquire()
        try:
            lines, self._lines = self._lines, []
            if self.stream is not None and hasattr(self.stream, "write"):
                if lines:
                    self.stream.write("".join(lines))
                if hasattr(self.stream, "flush"):
                    self.stream.flush()
        finally:
            self.release()

    def _timed_flush(self) -> None:
        self._timer_loop = None
        try:
            self.flush()
        except Exception:  # a closed or broken stream must not take the event loop down
            self._lines.clear()


PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class PlainLines:
    """INFO lines of one logger written the way the default set-up would write them, without a LogRecord each.

    The access log writes a line per request; making, filtering and formatting a record is most of its cost. When
    logging is as ``configure_logging`` leaves it by default (a plain-format ``DeferredFlushHandler`` on the root,
    no filters, no other handler on the way) the same text is built here directly, with the time stamp's seconds
    formatted once per second. ``for_logger`` returns None for any other set-up (JSON, ``--log-config``, a filter
    added), and the caller logs as usual.
    """

    def __init__(self, handler: DeferredFlushHandler, formatter: logging.Formatter, name: str) -> None:
        self._handler = handler
        self._converter = formatter.converter
        self._date_format = formatter.default_time_format
        self._msec_format = formatter.default_msec_format or "%s,%03d"
        self._middle = f" INFO {name}: "

    @classmethod
    def for_logger(cls, logger: logging.Logger) -> PlainLines | None:
        root = logging.getLogger()
        if len(root.handlers) != 1 or not logger.isEnabledFor(logging.INFO):
            return None
        handler = root.handlers[0]
        formatter = handler.formatter
        if (
            type(handler) is not DeferredFlushHandler
            or handler.filters
            or handler.level > logging.INFO
            or type(formatter) is not logging.Formatter
            or formatter._fmt != PLAIN_FORMAT
            or formatter.datefmt is not None
        ):
            return None
        current: logging.Logger | None = logger
        while current is not None and current is not root:
            if current.filters or current.handlers:
                return None
            if not current.propagate:
                return None  # nothing would reach the root's handler
            parent = current.parent
            current = parent if isinstance(parent, logging.Logger) else None
        if root.filters:
            return None
        return cls(handler, formatter, logger.name)

    # the last second formatted, for every instance: (second, converter, date format, text)
    _last: ClassVar[tuple[int, Any, str, str]] = (-1, None, "", "")

    def write(self, created: float, message: str) -> None:
        second = int(created)
        last = PlainLines._last
        if last[0] != second or last[1] is not self._converter or last[2] != self._date_format:
            last = (second, self._converter, self._date_format,
                    time.strftime(self._date_format, self._converter(created)))  # fmt: skip
            PlainLines._last = last
        msecs = int((created - second) * 1000)
        self._handler.add_line(self._msec_format % (last[3], msecs) + self._middle + message)


def configure_logging(level: str, fmt: str, log_config: Path | None) -> None:
    """``--log-config`` (a dictConfig in YAML/JSON, or a fileConfig .ini) wins over level and format."""
    if log_config is not None:
        text = log_config.read_text()
        if log_config.suffix in (".yaml", ".yml", ".json"):
            data = yaml.safe_load(text)
            if not isinstance(data, dict):
                raise ValueError(f"{log_config} must hold a logging dictConfig mapping")
            data.setdefault("version", 1)
            data.setdefault("disable_existing_loggers", False)
            logging.config.dictConfig(data)
        else:
            logging.config.fileConfig(log_config, disable_existing_loggers=False)
        return
    handler = DeferredFlushHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
