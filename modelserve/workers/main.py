"""The worker program: ``python -m modelserve.workers.main --fd N``.

One model version per worker. A single blocking loop: receive a batch frame, run the handler, send the results.
The parent owns batching, timeouts and supervision; the worker only computes.

Streams: a handler answers a request with a stream by returning an iterator (a generator) as its result, or by
calling ``context.send_intermediate`` (TorchServe's ``send_intermediate_predict_response``) before it returns. The
batch's RESULT frame goes out when the handler returns (plain results are answered then); the worker then runs the
batch's streams round-robin, one piece of each in turn, each piece its own frame, until every stream has ended. A
stream may be at most ``STREAM_WINDOW`` pieces ahead of its reader in the parent: out of credit, the worker waits,
reading credit and cancel frames (a cancel closes the generator, so its ``finally`` runs), and keeps any batch that
arrives meanwhile for later.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import select
import signal
import socket
import sys
import time
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelserve import __version__
from modelserve.batching.types import ERROR_CONTENT_TYPE, InferRequest, InferResult
from modelserve.handler import (
    BadInputError,
    Context,
    HandleFunction,
    RequestInfo,
    ResponseInfo,
    declared_batch_size,
    load_handler,
    model_signature,
)
from modelserve.protocols import CODECS
from modelserve.protocols.codec import Codec, ModelTarget, error_result
from modelserve.tscompat import expose_ts_package
from modelserve.workers.protocol import (
    LENGTH,
    STREAM_WINDOW,
    CancelMessage,
    CreditMessage,
    InferMessage,
    InitMessage,
    LoadFailedMessage,
    Message,
    ProtocolError,
    ReadyMessage,
    ResultMessage,
    ShutdownMessage,
    StreamEndMessage,
    StreamHead,
    StreamPieceMessage,
    decode,
    encode,
)

log = logging.getLogger("modelserve.worker")

TORCHSERVE_DEFAULT_HANDLERS = "ts.torch_handler"
MAX_REASON_CHARS = 300


class Channel:
    """Blocking frame I/O over the worker's end of the socket pair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def _recv_exact(self, size: int) -> memoryview:
        buffer = bytearray(size)
        view = memoryview(buffer)
        received = 0
        while received < size:
            count = self.sock.recv_into(view[received:], size - received)
            if count == 0:
                raise EOFError("parent closed the connection")
            received += count
        return view

    def receive(self) -> Message:
        (length,) = LENGTH.unpack(self._recv_exact(LENGTH.size))
        frame = self._recv_exact(length)
        return decode(frame[0], frame[1:])

    def send(self, message: Message) -> None:
        self.sock.sendmsg(encode(message))

    def readable(self) -> bool:
        """A frame (or the end of the connection) is waiting: ``receive`` would not wait for the parent."""
        ready, _, _ = select.select([self.sock], [], [], 0)
        return bool(ready)


def _set_thread_count(threads: int) -> None:
    torch = sys.modules.get("torch")
    if threads <= 0 and os.environ.get("OMP_NUM_THREADS", "").isdigit():
        threads = int(os.environ["OMP_NUM_THREADS"])  # the operator's choice (a template imported torch with 1)
    if torch is not None and threads > 0:
        torch.set_num_threads(threads)


def signature_of(instance: Any, model_config: dict[str, Any]) -> dict[str, Any]:
    """Inputs and outputs for /v2 metadata: the handler's own ``signature()`` (BaseHandler has one), else those of
    model-config.yaml or of a model a runtime loaded."""
    custom = getattr(instance, "signature", None)
    if callable(custom):
        described = custom()
        if isinstance(described, dict):
            return described

    return model_signature(getattr(instance, "model", None), model_config)


def _enveloped(handle: HandleFunction, name: str) -> HandleFunction:
    """The handler's entry wrapped in TorchServe's request envelope ``name`` (from the ts package)."""
    import importlib

    from modelserve.handler import HandlerError

    module = importlib.import_module(f"ts.torch_handler.request_envelope.{name}")
    classes = [c for c in vars(module).values() if isinstance(c, type) and c.__module__ == module.__name__]
    if len(classes) != 1:
        raise HandlerError(f"request envelope {name!r} defines {len(classes)} classes, expected one")
    wrapped: HandleFunction = classes[0](handle).handle
    return wrapped


def _error_of(exc: BaseException) -> tuple[int, str]:
    """The status and message a handler's exception answers with."""
    if isinstance(exc, BadInputError):
        return 400, str(exc)
    if isinstance(exc, MemoryError):
        return 507, f"{type(exc).__name__}: {exc}"
    # modelserve's PredictionError and TorchServe's PredictionException (ours or a real one): its code and message
    code = getattr(exc, "error_code", None)
    if isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599:
        message = getattr(exc, "message", None)
        return code, message if isinstance(message, str) else str(exc)
    return 500, f"{type(exc).__name__}: {exc}"


def decode_guarded(request: InferRequest, codec: Codec) -> dict[str, Any] | InferResult:
    """The one place a worker decodes a request's untrusted bytes (with its protocol's codec): the handler's data
    item, or the request's error.

    Whatever a body makes a decoder raise (RecursionError, OverflowError, ValueError, UnicodeError, a bug of ours)
    answers that request alone: 400, or 507 when decoding it ran out of memory. The worker and the rest of its batch
    go on.
    """
    try:
        return codec.decode(request)
    except BadInputError as exc:
        return error_result(400, str(exc))
    except MemoryError:
        return error_result(507, "not enough memory to decode the request")
    except Exception as exc:
        reason = f"{type(exc).__name__}: {str(exc)[:MAX_REASON_CHARS]}"  # a message may quote much of the body
        log.warning("request %s did not decode (%r)", request.request_id, reason)
        return error_result(400, f"request body cannot be decoded ({reason})")


_NO_FINAL = object()
_TEXT_TYPE = "text/plain; charset=utf-8"
_BYTES_TYPE = "application/octet-stream"


def is_stream(output: Any) -> bool:
    """Whether a handler's result for one request is a stream: an iterator (a generator), not a value."""
    return isinstance(output, Iterator) and not isinstance(output, (str, bytes, bytearray, memoryview))


class _PieceError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(eq=False)
class _Stream:
    """One request's stream in the worker: where its pieces come from and how many it may still send."""

    index: int  # position in the batch
    codec: Codec
    item: dict[str, Any]
    response: ResponseInfo
    iterator: Iterator[Any] | None = None
    final: Any = _NO_FINAL  # a last piece to send (the result of a handler that sent intermediate parts)
    error: tuple[int, str] | None = None  # the handler failed after the stream began: it ends with this
    credit: int = STREAM_WINDOW
    started: bool = False  # its first frame (with the head) went out
    ended: bool = False


def _failed_batch(message: InferMessage, status: int, reason: str) -> ResultMessage:
    results = [error_result(status, reason) for _ in message.requests]
    return ResultMessage(batch_id=message.batch_id, results=results)


class Worker:
    def __init__(self, channel: Channel, init: InitMessage) -> None:
        self.channel = channel
        self.init = init
        self.context = Context(
            model_name=init.model_name,
            model_version=init.model_version,
            model_dir=init.model_dir,
            manifest=init.manifest,
            batch_size=init.batch_size,
            model_yaml_config=init.model_config,
            intra_op_threads=init.intra_op_threads,
            server_version=__version__,
        )
        self.handle: HandleFunction | None = None
        self.instance: Any = None
        self.signature: dict[str, Any] = {}
        self.declared_batch_size = 0  # what the handler declared, when the init left the batch size to it
        self.singles_only = False  # the model failed on a batch its declared default formed: one request at a time
        self.target = ModelTarget(init.model_name, init.model_version)
        # the streams of the batch at hand, by position; frames that came while streaming and wait their turn
        self.streams: dict[int, _Stream] = {}
        self.batch_id = 0
        self.queued: deque[Message] = deque()
        self._call: tuple[list[int], list[Codec], list[dict[str, Any]]] = ([], [], [])  # the handler call at hand
        self.context.stream_sink = self._send_intermediate

    def load(self) -> None:
        from modelserve.archive.builtin import builtin_handlers_dir

        model_dir = Path(self.init.model_dir)
        os.chdir(model_dir)
        for entry in reversed(self.init.python_path):
            if entry not in sys.path:
                sys.path.insert(0, entry)  # the model's own dependencies win over the server's environment
        expose_ts_package()  # handlers written against TorchServe import ts.*; a real TorchServe's ts wins
        # an archive naming one of TorchServe's default handlers without carrying it gets TorchServe's (ts.*)
        self.handle, self.instance = load_handler(
            model_dir, self.init.handler, builtin_handlers_dir(), default_package=TORCHSERVE_DEFAULT_HANDLERS
        )
        loaded = self.handle
        if self.init.envelope:
            self.handle = _enveloped(self.handle, self.init.envelope)
        if self.instance is not None:
            initialize = getattr(self.instance, "initialize", None)
            if callable(initialize):
                initialize(self.context)
        else:
            # TorchServe calls a function entry once with no data to let it initialize
            self.handle(None, self.context)  # type: ignore[arg-type]
        if self.init.batch_size_auto:
            self.declared_batch_size = declared_batch_size(loaded, self.instance)
            if self.declared_batch_size:
                self.context.system_properties["batch_size"] = self.declared_batch_size
                self.context.system_properties["batch_size_source"] = "handler"
        _set_thread_count(self.init.intra_op_threads)
        self.signature = signature_of(self.instance, self.init.model_config)
        outputs = self.signature.get("outputs")
        names = (
            [str(o["name"]) for o in outputs if isinstance(o, dict) and "name" in o]
            if isinstance(outputs, list)
            else []
        )
        self.target = ModelTarget(self.init.model_name, self.init.model_version, tuple(names))

    def run_batch(self, message: InferMessage) -> ResultMessage:
        self.batch_id = message.batch_id
        self.streams = {}
        requests = message.requests
        results: list[InferResult | None] = [None] * len(requests)
        data: list[dict[str, Any]] = []
        infos: list[RequestInfo] = []
        positions: list[int] = []
        codecs: list[Codec] = []
        for index, request in enumerate(requests):
            codec = CODECS[request.protocol]
            decoded = decode_guarded(request, codec)
            if isinstance(decoded, InferResult):
                results[index] = decoded
                continue
            data.append(decoded)
            infos.append(RequestInfo(request.request_id, request.headers, request.content_type))
            positions.append(index)
            codecs.append(codec)
        timings: dict[str, float] = {}
        if data:
            self._run_handler(data, infos, positions, codecs, results, timings)
        final = [r if r is not None else error_result(500, "no result") for r in results]
        metrics = [sample.__dict__ for sample in self.context.metrics.drain()]
        streamed = sorted(i for i, s in self.streams.items() if not s.ended)
        return ResultMessage(
            batch_id=message.batch_id, results=final, timings=timings, metrics=metrics, streamed=streamed
        )

    def _run_handler(
        self,
        data: list[dict[str, Any]],
        infos: list[RequestInfo],
        positions: list[int],
        codecs: list[Codec],
        results: list[InferResult | None],
        timings: dict[str, float],
    ) -> None:
        assert self.handle is not None
        if self.singles_only and len(data) > 1:
            self._run_alone(data, infos, positions, codecs, results, timings)
            return
        self.context.begin_batch(infos)
        self.context.timings = {}
        self._call = (positions, codecs, data)
        started = time.perf_counter()
        try:
            outputs = self.handle(data, self.context)
            if not isinstance(outputs, list) or len(outputs) != len(data):
                count = len(outputs) if isinstance(outputs, list) else type(outputs).__name__
                raise RuntimeError(
                    f"handler returned {count} results for a batch of {len(data)} requests; "
                    "it must return a list with one result per request"
                )
        except Exception as exc:
            status, message = _error_of(exc)
            if len(data) > 1 and self.declared_batch_size > 1:
                # the batch exists only because the handler declared a default: each request gets the outcome it
                # would have had alone, and a model that fails on a batch whose requests all succeed alone (a fixed
                # batch dimension) is run one request at a time from now on
                self._run_alone(data, infos, positions, codecs, results, timings)
                if status >= 500 and all(r is not None and r.status < 400 for r in (results[i] for i in positions)):
                    self.singles_only = True
                    log.warning(
                        "the model failed on a batch of %d (%s) but not on one request: running one request at a "
                        "time from now on; set batchSize: 1 in model-config.yaml to say so",
                        len(data), message,
                    )  # fmt: skip
                return
            if status >= 500:
                traceback.print_exc()
            for index in positions:
                results[index] = error_result(status, message)
                stream = self.streams.get(index)
                if stream is not None:  # it sent parts already: its stream ends with the error
                    stream.error = (status, message)
            return
        finally:
            timings.update(self.context.timings)
            timings["handler"] = time.perf_counter() - started
        responses = self.context.responses
        target = self.target
        for slot, (index, output) in enumerate(zip(positions, outputs, strict=True)):
            stream = self.streams.get(index)
            if stream is None and is_stream(output):
                stream = self.streams[index] = _Stream(index, codecs[slot], data[slot], responses[slot])
            if stream is not None:
                if is_stream(output):
                    stream.iterator = output
                else:
                    stream.final = output
                results[index] = InferResult(200, "")  # a placeholder: the stream's frames answer
                continue
            results[index] = codecs[slot].encode(output, data[slot], responses[slot], target)

    # ---- streams ----------------------------------------------------------------------------------------------
    def _send_intermediate(self, idx: int, output: Any) -> None:
        """``context.send_intermediate`` from the handler: one piece of request ``idx``'s answer goes out now."""
        positions, codecs, data = self._call
        index = positions[idx]
        stream = self.streams.get(index)
        if stream is None:
            stream = self.streams[index] = _Stream(index, codecs[idx], data[idx], self.context.responses[idx])
        if stream.ended:
            return  # cancelled: its client left
        while stream.credit <= 0 and not stream.ended:
            self._on_control(self.channel.receive())
        self._poll_control()
        if not stream.ended:
            self._emit(stream, output)

    def _piece(self, stream: _Stream, output: Any) -> tuple[bytes, str, dict[str, str]]:
        if isinstance(output, (bytes, bytearray, memoryview)):
            return bytes(output), _BYTES_TYPE, {}
        if isinstance(output, str):
            return output.encode(), _TEXT_TYPE, {}
        result = stream.codec.encode(output, stream.item, ResponseInfo(), self.target)
        if result.content_type == ERROR_CONTENT_TYPE:
            raise _PieceError(result.status, result.body.decode("utf-8", "replace"))
        return result.body, result.content_type, result.headers

    def _head(self, stream: _Stream, content_type: str) -> StreamHead | None:
        if stream.started:
            return None
        stream.started = True
        response = stream.response
        status = response.status if response.status < 400 else 200
        return StreamHead(status, response.content_type or content_type, dict(response.headers))

    def _emit(self, stream: _Stream, output: Any) -> None:
        """Send one piece of ``stream`` (it has credit); a piece that cannot be encoded ends it with an error."""
        try:
            body, content_type, headers = self._piece(stream, output)
        except _PieceError as exc:
            self._end(stream, exc.status, exc.message)
            return
        except Exception as exc:
            self._end(stream, 500, f"stream piece cannot be sent: {type(exc).__name__}: {exc}")
            return
        message = StreamPieceMessage(self.batch_id, stream.index, body, self._head(stream, content_type), headers)
        try:
            self.channel.send(message)
        except ProtocolError as exc:
            self._end(stream, 500, f"stream piece cannot be sent: {exc}")
            return
        stream.credit -= 1

    def _end(self, stream: _Stream, status: int = 200, error: str = "") -> None:
        if stream.ended:
            return
        stream.ended = True
        if stream.iterator is not None:
            close = getattr(stream.iterator, "close", None)
            if callable(close):
                with contextlib.suppress(Exception):
                    close()  # a generator's finally runs now
        head = self._head(stream, _BYTES_TYPE)
        self.channel.send(StreamEndMessage(self.batch_id, stream.index, status, error, head))

    def _on_control(self, message: Message) -> None:
        """A frame that came while streaming: credit or cancel for a stream, or a batch kept for later."""
        if isinstance(message, CreditMessage):
            stream = self.streams.get(message.index)
            if stream is not None and message.batch_id == self.batch_id:
                stream.credit += message.count
        elif isinstance(message, CancelMessage):
            stream = self.streams.get(message.index)
            if stream is not None and message.batch_id == self.batch_id:
                self._end(stream)  # the parent drops what the stream sent after its cancel
        else:
            self.queued.append(message)

    def _poll_control(self) -> None:
        while self.channel.readable():
            self._on_control(self.channel.receive())

    def run_streams(self) -> None:
        """Run the batch's open streams round-robin until each has ended (sent after the batch's RESULT)."""
        try:
            open_streams = [s for _, s in sorted(self.streams.items()) if not s.ended]
            while open_streams:
                progressed = False
                for stream in open_streams:
                    self._poll_control()
                    if stream.ended or stream.credit <= 0:
                        continue
                    progressed = True
                    self._step(stream)
                open_streams = [s for s in open_streams if not s.ended]
                if open_streams and not progressed:
                    self._on_control(self.channel.receive())  # every stream waits for its reader
        finally:
            for stream in self.streams.values():
                if not stream.ended and stream.iterator is not None:
                    stream.ended = True
                    close = getattr(stream.iterator, "close", None)
                    if callable(close):
                        with contextlib.suppress(Exception):
                            close()
            self.streams = {}

    def _step(self, stream: _Stream) -> None:
        """One piece of ``stream``, or its end."""
        if stream.error is not None:
            self._end(stream, *stream.error)
            return
        if stream.iterator is not None:
            try:
                output = next(stream.iterator)
            except StopIteration:
                stream.iterator = None
            except Exception as exc:
                status, message = _error_of(exc)
                if status >= 500:
                    traceback.print_exc()
                self._end(stream, status, message)
                return
            else:
                self._emit(stream, output)
                return
        if stream.final is not _NO_FINAL:
            final, stream.final = stream.final, _NO_FINAL
            if stream.response.status >= 400:
                self._end(stream, stream.response.status, stream.response.reason or str(final))
            else:
                self._emit(stream, final)
        else:
            self._end(stream)

    def _run_alone(
        self,
        data: list[dict[str, Any]],
        infos: list[RequestInfo],
        positions: list[int],
        codecs: list[Codec],
        results: list[InferResult | None],
        timings: dict[str, float],
    ) -> None:
        """Run each request of the batch as a batch of its own (the handler's time is their sum)."""
        spent = 0.0
        for one in range(len(data)):
            part = slice(one, one + 1)
            self._run_handler(data[part], infos[part], positions[part], codecs[part], results, timings)
            spent += timings.get("handler", 0.0)
        timings["handler"] = spent


def serve(channel: Channel) -> int:
    """Run one worker on ``channel``: load on its INIT frame, then answer batches until told to stop."""
    first = channel.receive()
    if not isinstance(first, InitMessage):
        raise RuntimeError(f"expected an init frame, got {type(first).__name__}")
    worker = Worker(channel, first)
    try:
        worker.load()
    except BaseException as exc:
        traceback.print_exc()
        channel.send(LoadFailedMessage(error=f"{type(exc).__name__}: {exc}"))
        return 1
    # everything loaded so far (torch, the model) lives for the worker's life: keep it out of the collector's scans,
    # or a full collection over torch's objects stalls a request now and then
    gc.collect()
    gc.freeze()
    channel.send(ReadyMessage(pid=os.getpid(), signature=worker.signature, batch_size=worker.declared_batch_size))
    while True:
        try:
            message = worker.queued.popleft() if worker.queued else channel.receive()
        except EOFError:
            return 0
        if isinstance(message, ShutdownMessage):
            return 0
        if isinstance(message, InferMessage):
            try:
                channel.send(_answer(worker, message))
            except ProtocolError as exc:  # results too big for one frame: nothing was sent yet
                channel.send(_failed_streams(worker, _failed_batch(message, 500, f"results cannot be sent: {exc}")))
            worker.run_streams()


def _answer(worker: Worker, message: InferMessage) -> ResultMessage:
    """The batch's results; a failure outside the guarded decode and handler call fails the batch, not the worker."""
    try:
        return worker.run_batch(message)
    except MemoryError:
        return _failed_streams(worker, _failed_batch(message, 507, "worker ran out of memory answering the batch"))
    except Exception as exc:
        traceback.print_exc()
        reason = f"worker failed answering the batch ({type(exc).__name__}: {exc})"
        return _failed_streams(worker, _failed_batch(message, 500, reason))


def _failed_streams(worker: Worker, failed: ResultMessage) -> ResultMessage:
    """A failed batch whose streams began already: each ends with the batch's error after the RESULT frame."""
    failed.streamed = sorted(i for i, s in worker.streams.items() if not s.ended)
    for index in failed.streamed:
        result = failed.results[index]
        worker.streams[index].error = (result.status, result.body.decode("utf-8", "replace"))
    return failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="modelserve-worker")
    parser.add_argument("--fd", type=int, required=True, help="inherited socket file descriptor")
    args = parser.parse_args(argv)
    # the parent handles Ctrl-C and SIGTERM for the whole tree; a worker stops when told or when its socket closes
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        level=os.environ.get("MODELSERVE_WORKER_LOG_LEVEL", "INFO"),
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("python_multipart").setLevel(logging.ERROR)  # it warns on every malformed body: ours is a 400
    sock = socket.socket(fileno=args.fd)
    try:
        return serve(Channel(sock))
    except (EOFError, ConnectionError):
        return 0
    except Exception:
        traceback.print_exc()  # the parent logs the worker's stderr: a dead worker says why
        return 1
    finally:
        sock.close()
        sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
