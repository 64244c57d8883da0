"""What a protocol codec is: the one object that knows how a protocol reads requests, writes results and errors.

A codec has two sides. In a worker it decodes a request's body into the handler's ``data`` item and encodes the
handler's output as the protocol's result. In the server it gives the protocol's error document and the path
prefixes whose errors take that shape. Neither side knows HTTP: the server writes what a codec returns, and so can
a front end for another transport.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelserve.batching.types import ERROR_CONTENT_TYPE, InferRequest, InferResult, Protocol
from modelserve.handler_errors import BadInputError

if TYPE_CHECKING:
    from modelserve.handler import ResponseInfo

JSON_TYPE = "application/json"


@dataclass(frozen=True)
class ModelTarget:
    """What an encoder says about the model that answered: its name, version and output tensor names."""

    name: str
    version: str
    output_names: tuple[str, ...] = ()


class Codec(abc.ABC):
    """One protocol's decoding, encoding and error shape."""

    protocol: Protocol
    # HTTP paths under these prefixes answer errors in this codec's shape (clients of the protocol parse them)
    prefixes: tuple[str, ...] = ()

    @abc.abstractmethod
    def decode(self, request: InferRequest) -> dict[str, Any]:
        """The handler's data item for ``request`` (worker side); BadInputError when the body does not decode."""

    @abc.abstractmethod
    def encode(self, output: Any, item: dict[str, Any], response: ResponseInfo, model: ModelTarget) -> InferResult:
        """The handler's ``output`` for the request decoded as ``item``, with the handler's response settings."""

    @abc.abstractmethod
    def error_document(self, status: int, message: str, type_name: str | None = None) -> dict[str, object]:
        """The JSON object an error answers with; ``type_name`` names the error where the protocol says one."""


class KServeCodec(Codec):
    """The KServe protocols (v1 and the Open Inference Protocol): ``{"error": ...}`` errors, and an encoding that
    fails its own request alone when a result cannot be carried."""

    def encode(self, output: Any, item: dict[str, Any], response: ResponseInfo, model: ModelTarget) -> InferResult:
        if response.status >= 400:  # the handler's own error status: the protocol's error shape
            return error_result(response.status, response.reason or str(output))
        try:
            return self.encode_output(output, item, model)
        except BadInputError as exc:
            return error_result(400, str(exc))
        except Exception as exc:  # a result the protocol cannot carry: this request fails, the worker lives
            return error_result(500, f"handler result cannot be encoded ({type(exc).__name__}: {exc})")

    @abc.abstractmethod
    def encode_output(self, output: Any, item: dict[str, Any], model: ModelTarget) -> InferResult:
        """A successful output as the protocol's response; BadInputError when the request asked for what it lacks."""

    def error_document(self, status: int, message: str, type_name: str | None = None) -> dict[str, object]:
        return {"error": message}


def error_result(status: int, message: str) -> InferResult:
    """A result carrying an error message instead of a handler's output: the server writes it in the codec's shape."""
    return InferResult(status=status, content_type=ERROR_CONTENT_TYPE, body=message.encode())


def json_default(value: Any) -> Any:
    """JSON for numpy arrays and scalars, torch tensors: everything with ``tolist()`` or ``item()``."""
    for attr in ("tolist", "item"):
        method = getattr(value, attr, None)
        if callable(method):
            return method()
    raise TypeError(f"result of type {type(value).__name__} is not JSON serializable")


def maybe_text(raw: bytes) -> Any:
    """``raw`` as str when it is UTF-8, else as it is (TorchServe hands text over as str, bytes when not UTF-8)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
