"""The errors of the handler contract, in a module of their own so that the handler and the runtimes share them.

``modelserve.handler`` re-exports them: handlers import ``from modelserve.handler import BadInputError``.
"""

from __future__ import annotations


class HandlerError(Exception):
    """Raised by the server when a handler module cannot be loaded or breaks the contract."""


class BadInputError(ValueError):
    """Raise from a handler when a request's input is malformed: the client gets 400 with this message."""


class PredictionError(Exception):
    """Raise from a handler to answer the whole batch with ``error_code`` (4xx or 5xx) and ``message``.

    TorchServe's ``ts.utils.util.PredictionException`` is this class under its own name.
    """

    def __init__(self, message: str, error_code: int = 500) -> None:
        self.message = message
        self.error_code = error_code
        super().__init__(message)
