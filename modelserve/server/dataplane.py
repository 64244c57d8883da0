"""The data plane: one inference request from a model name to its result, whatever the protocol and the front end.

A front end (the HTTP routes, or any other transport) resolves the version, hands over the body it read, and writes
the neutral :class:`~modelserve.batching.types.InferResult` it gets back through the protocol's codec. Errors are
the typed errors of :mod:`modelserve.errors` (404 unknown model or version, 503 draining, full queue or failed
model, 504 the worker's response timeout, 500 a worker that died); a handler's own error comes back as a result
whose content type is ``ERROR_CONTENT_TYPE``. Nothing here knows HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from modelserve.batching.types import ERROR_CONTENT_TYPE, InferResult, Protocol, ResultStream
from modelserve.errors import ModelLoadError, ServiceUnavailableError
from modelserve.logs import PlainLines
from modelserve.protocols.codec import error_result

if TYPE_CHECKING:
    from modelserve.models.version import ModelVersion
    from modelserve.server.state import ServerState

access_log = logging.getLogger("modelserve.access")
ACCESS_FORMAT = "%s %s %s %s %d %.2fms"
# the request header TorchServe's frontend sets to tell a handler to explain instead of predict
EXPLAIN_HEADER = "explain"


class BoundedStream:
    """A streamed answer whose every piece is held to ``max_response_size``: the stream as a whole may be as long as
    it likes, one piece may not. An oversized piece ends the stream with a 500 error piece and stops it in the worker.
    """

    def __init__(self, stream: ResultStream, limit: int) -> None:
        self.stream = stream
        self.limit = limit

    def __aiter__(self) -> AsyncIterator[InferResult]:
        return self._pieces()

    async def _pieces(self) -> AsyncIterator[InferResult]:
        async for piece in self.stream:
            if len(piece.body) > self.limit and piece.content_type != ERROR_CONTENT_TYPE:
                self.stream.cancel()
                yield error_result(
                    500, f"streamed piece of {len(piece.body)} bytes exceeds max_response_size ({self.limit})"
                )
                return
            yield piece

    def cancel(self) -> None:
        self.stream.cancel()


class _DeferredAccessLog:
    """Access lines leave the request path: kept as tuples, handed to logging once the response has been written.

    The line's time is the request's end, not the moment logging sees it.
    """

    # how long a look at the logging set-up holds (it changes at start-up, when --log-config is read)
    SETUP_CHECK_S = 1.0

    def __init__(self) -> None:
        self.pending: list[tuple[float, tuple[object, ...]]] = []
        self._lines: PlainLines | None = None
        self._checked_at = -self.SETUP_CHECK_S

    def _plain_lines(self) -> PlainLines | None:
        now = time.monotonic()
        if now - self._checked_at >= self.SETUP_CHECK_S:
            self._lines = PlainLines.for_logger(access_log)
            self._checked_at = now
        return self._lines

    def add(self, *args: object) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        if not self.pending:
            asyncio.get_running_loop().call_soon(self.flush)
        self.pending.append((time.time(), args))

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        lines = self._plain_lines()  # the default set-up: the same text, without a record each
        if lines is not None:
            for created, args in pending:
                lines.write(created, ACCESS_FORMAT % args)
            return
        for created, args in pending:
            record = access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, ACCESS_FORMAT, args, None)
            record.created = created
            record.msecs = int((created - int(created)) * 1000) + 0.0
            access_log.handle(record)


ACCESS_LOG = _DeferredAccessLog()


class DataPlane:
    """Inference on the server's models: resolve a version, queue a request on it, await its result, count it."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.registry = state.registry
        self.max_request_size = state.config.max_request_size
        self.max_response_size = state.config.max_response_size

    def resolve(self, name: str, version: str | None) -> ModelVersion:
        """The version a request goes to (the default when ``version`` is None); raises while the server drains."""
        if self.state.draining:
            raise ServiceUnavailableError("server is shutting down", retry_after_s=5)
        return self.registry.get(name, version)

    async def infer(
        self,
        version: ModelVersion,
        protocol: Protocol,
        body: bytes,
        content_type: str,
        headers: dict[str, str],
        request_id: str,
    ) -> InferResult:
        """Queue one request on ``version`` and await its result; the job is abandoned if the caller goes away.

        The response timeout is the worker layer's: its WorkerTimeoutError (504) comes through as it is.
        """
        job = version.submit(body, content_type, headers, request_id, protocol)
        try:
            result = await job.future
        except ModelLoadError as exc:
            raise ServiceUnavailableError(str(exc), retry_after_s=30) from None
        if result.stream is not None:
            result.stream = BoundedStream(result.stream, self.max_response_size)
        elif len(result.body) > self.max_response_size and result.content_type != ERROR_CONTENT_TYPE:
            return error_result(
                500,
                f"handler response of {len(result.body)} bytes exceeds max_response_size ({self.max_response_size})",
            )
        return result

    @staticmethod
    def record(
        version: ModelVersion | None,
        name: str,
        version_name: str | None,
        request_id: str,
        method: str,
        status: int,
        started: float,
    ) -> None:
        """Count a request's outcome on its version (when it resolved to one) and write its access line."""
        latency = time.perf_counter() - started
        if version is not None:
            version.stats.record_request(status, latency)
        ACCESS_LOG.add(
            request_id, name, version.version if version else (version_name or "-"), method, status, latency * 1000
        )
