"""Logging setup for the server process (done by the CLI, never at import time)."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
import sys
import time
from pathlib import Path
from typing import Any

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
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            if self._timer_loop is not loop:  # none armed yet, or armed on a loop that has since gone
                self._timer_loop = loop
                loop.call_later(self.FLUSH_INTERVAL_S, self._timed_flush)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

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
