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
    """A stream handler that, on the event loop's thread, flushes once per ``FLUSH_INTERVAL_S`` instead of per line.

    Under load the server logs one access line per request; a flush per line is a write system call per request
    on the event loop. Here lines are buffered and flushed by a timer a moment later (so ``tail -f`` still sees
    them at once to the eye); WARNING and above, and records from other threads, are flushed immediately.
    """

    FLUSH_INTERVAL_S = 0.1

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._flush_pending = False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.flush()
                return
            if not self._flush_pending:
                try:
                    loop = asyncio.get_running_loop()
                except RuntimeError:
                    self.flush()
                    return
                self._flush_pending = True
                loop.call_later(self.FLUSH_INTERVAL_S, self._timed_flush)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _timed_flush(self) -> None:
        self._flush_pending = False
        self.flush()


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
