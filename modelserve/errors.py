"""Domain errors of the server core. No HTTP here: ``modelserve.server.errors`` maps each to a status code."""

from __future__ import annotations


class ModelServeError(Exception):
    """Base of the server's typed errors."""


class ModelNotFoundError(ModelServeError):
    pass


class VersionNotFoundError(ModelServeError):
    pass


class ModelAlreadyExistsError(ModelServeError):
    pass


class InvalidRequestError(ModelServeError):
    """A management or inference request with bad parameters."""


class ForbiddenError(ModelServeError):
    """An operation refused by policy (deleting a default version in use, a disallowed URL...)."""


class NotAllowedError(ModelServeError):
    """An API that is disabled by configuration."""


class ServiceUnavailableError(ModelServeError):
    """Queue full, no live worker, model failed or server draining: try again later."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class WorkerDiedError(ModelServeError):
    """The worker serving a request exited before answering.

    ``unstarted`` names batches (by id) that were handed to the worker's transport but are known never to have
    reached the worker (a cluster call refused before it ran): they may run on another worker.
    """

    def __init__(self, message: str, unstarted: frozenset[int] = frozenset()) -> None:
        super().__init__(message)
        self.unstarted = unstarted


class WorkerTimeoutError(ModelServeError):
    """The handler exceeded responseTimeout."""


class WorkerLoadError(ModelServeError):
    """A worker failed to start or to initialize its handler."""


class ModelLoadError(ModelServeError):
    """A model version could not be loaded (every worker attempt failed)."""


class ConfigError(ModelServeError):
    """Invalid server or model configuration."""
