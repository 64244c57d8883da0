"""The worker program: ``python -m modelserve.workers.main --fd N``.

One model version per worker. A single blocking loop: receive a batch frame, run the handler, send the results.
The parent owns batching, timeouts and supervision; the worker only computes.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from modelserve import __version__
from modelserve.batching.types import InferRequest, InferResult
from modelserve.handler import (
    BadInputError,
    Context,
    HandleFunction,
    RequestInfo,
    declared_batch_size,
    load_handler,
    model_signature,
)
from modelserve.protocols import CODECS
from modelserve.protocols.codec import Codec, ModelTarget, error_result
from modelserve.tscompat import expose_ts_package
from modelserve.workers.protocol import (
    LENGTH,
    InferMessage,
    InitMessage,
    LoadFailedMessage,
    Message,
    ProtocolError,
    ReadyMessage,
    ResultMessage,
    ShutdownMessage,
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
        return ResultMessage(batch_id=message.batch_id, results=final, timings=timings, metrics=metrics)

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
            return
        finally:
            timings.update(self.context.timings)
            timings["handler"] = time.perf_counter() - started
        responses = self.context.responses
        target = self.target
        for slot, (index, output) in enumerate(zip(positions, outputs, strict=True)):
            results[index] = codecs[slot].encode(output, data[slot], responses[slot], target)

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


def _serve(channel: Channel) -> int:
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
            message = channel.receive()
        except EOFError:
            return 0
        if isinstance(message, ShutdownMessage):
            return 0
        if isinstance(message, InferMessage):
            try:
                channel.send(_answer(worker, message))
            except ProtocolError as exc:  # results too big for one frame: nothing was sent yet
                channel.send(_failed_batch(message, 500, f"results cannot be sent: {exc}"))


def _answer(worker: Worker, message: InferMessage) -> ResultMessage:
    """The batch's results; a failure outside the guarded decode and handler call fails the batch, not the worker."""
    try:
        return worker.run_batch(message)
    except MemoryError:
        return _failed_batch(message, 507, "worker ran out of memory answering the batch")
    except Exception as exc:
        traceback.print_exc()
        return _failed_batch(message, 500, f"worker failed answering the batch ({type(exc).__name__}: {exc})")


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
        return _serve(Channel(sock))
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
