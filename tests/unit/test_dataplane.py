"""The protocol-neutral data plane on a real registry holding fake versions (a real batcher, no workers): lookups,
the queue's 503, the worker layer's timeout as 504, results passed through, abandoned jobs, outcomes counted."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest

from modelserve.batching.batcher import Batcher, Job
from modelserve.batching.types import ERROR_CONTENT_TYPE, InferRequest, InferResult, Protocol
from modelserve.config import ServerConfig
from modelserve.errors import (
    ModelLoadError,
    ModelNotFoundError,
    ServiceUnavailableError,
    VersionNotFoundError,
    WorkerTimeoutError,
)
from modelserve.models.registry import ModelRegistry
from modelserve.models.store import ModelStore
from modelserve.models.version import ModelVersion
from modelserve.server.dataplane import DataPlane
from modelserve.server.errors import status_for
from modelserve.server.state import ServerState
from modelserve.stats import VersionStats
from modelserve.workers.backend import WorkerBackend

T = TypeVar("T")


class FakeVersion:
    """What the data plane uses of a ModelVersion: ``submit`` onto a real batcher, ``stats``, ``version``."""

    def __init__(self, name: str, version: str, capacity: int = 4) -> None:
        self.name = name
        self.version = version
        self.batcher = Batcher(capacity)
        self.stats = VersionStats()
        self.jobs: list[Job] = []
        self.on_submit: Callable[[Job], object] = lambda job: None

    def submit(
        self, body: bytes, content_type: str, headers: dict[str, str], request_id: str | None, protocol: Protocol
    ) -> Job:
        request = InferRequest(request_id or uuid.uuid4().hex, content_type, headers, body, protocol.value)
        job = Job(request=request, future=asyncio.get_running_loop().create_future())
        self.batcher.submit(job)
        self.jobs.append(job)
        self.on_submit(job)
        return job


@pytest.fixture
def plane(tmp_path: Path) -> DataPlane:
    config = ServerConfig(max_response_size=100)
    registry = ModelRegistry(config, tmp_path, backend=cast(WorkerBackend, object()))
    for name, versions in (("m", ("1.0", "2.0")), ("small", ("1",))):
        registry.models[name] = {v: cast(ModelVersion, FakeVersion(name, v, capacity=1)) for v in versions}
        registry.defaults[name] = versions[0]
    return DataPlane(ServerState(config=config, registry=registry, store=ModelStore(None), snapshot_path=None))


def fake(version: ModelVersion) -> FakeVersion:
    return cast(FakeVersion, version)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coroutine, 5))


async def answered(plane: DataPlane, version: ModelVersion, answer: Callable[[Job], None]) -> InferResult:
    fake(version).on_submit = lambda job: asyncio.get_running_loop().call_soon(answer, job)
    return await plane.infer(version, Protocol.OIP_V2, b"{}", "application/json", {"a": "b"}, "rid")


def test_an_unknown_model_is_a_404(plane: DataPlane) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        plane.resolve("nope", None)
    assert status_for(caught.value) == 404


def test_an_unknown_version_is_a_404_and_a_known_one_resolves(plane: DataPlane) -> None:
    with pytest.raises(VersionNotFoundError) as caught:
        plane.resolve("m", "9.9")
    assert status_for(caught.value) == 404
    assert plane.resolve("m", "2.0").version == "2.0"
    assert plane.resolve("m", None).version == "1.0"  # the default


def test_a_draining_server_is_a_503(plane: DataPlane) -> None:
    plane.state.draining = True
    with pytest.raises(ServiceUnavailableError) as caught:
        plane.resolve("m", None)
    assert status_for(caught.value) == 503 and caught.value.retry_after_s == 5


def test_a_full_queue_is_a_503(plane: DataPlane) -> None:
    version = plane.resolve("small", None)

    async def two() -> None:
        first = asyncio.ensure_future(plane.infer(version, Protocol.TORCHSERVE, b"x", "", {}, "r1"))
        await asyncio.sleep(0)  # the first is queued (capacity 1) and never answered
        try:
            with pytest.raises(ServiceUnavailableError, match="queue is full") as caught:
                await plane.infer(version, Protocol.TORCHSERVE, b"y", "", {}, "r2")
            assert status_for(caught.value) == 503
        finally:
            first.cancel()

    run(two())
    assert len(fake(version).jobs) == 1


def test_the_worker_layers_timeout_is_a_504(plane: DataPlane) -> None:
    version = plane.resolve("m", None)

    def time_out(job: Job) -> None:
        job.future.set_exception(WorkerTimeoutError("no answer within 0.01 s"))

    fake(version).on_submit = lambda job: asyncio.get_running_loop().call_later(0.01, time_out, job)
    with pytest.raises(WorkerTimeoutError) as caught:
        run(plane.infer(version, Protocol.TORCHSERVE, b"x", "", {}, "r"))
    assert status_for(caught.value) == 504


def test_a_model_that_failed_to_load_is_a_503_to_retry_later(plane: DataPlane) -> None:
    version = plane.resolve("m", None)
    with pytest.raises(ServiceUnavailableError, match="weights") as caught:
        run(answered(plane, version, lambda job: job.future.set_exception(ModelLoadError("weights are corrupt"))))
    assert status_for(caught.value) == 503 and caught.value.retry_after_s == 30


def test_a_result_is_passed_through_unchanged_and_the_request_as_given(plane: DataPlane) -> None:
    version = plane.resolve("m", "2.0")
    result = InferResult(200, "application/octet-stream", {"Inference-Header-Content-Length": "2"}, b"{}\x00\x01")
    got = run(answered(plane, version, lambda job: job.future.set_result(result)))
    assert got is result
    assert got == InferResult(200, "application/octet-stream", {"Inference-Header-Content-Length": "2"}, b"{}\x00\x01")
    request = fake(version).jobs[0].request
    assert (request.protocol, request.body, request.content_type, request.headers, request.request_id) == (
        "v2", b"{}", "application/json", {"a": "b"}, "rid"
    )  # fmt: skip


def test_a_handlers_error_is_a_result_and_is_never_size_checked(plane: DataPlane) -> None:
    version = plane.resolve("m", None)
    error = InferResult(400, ERROR_CONTENT_TYPE, body=b"e" * 500)
    assert run(answered(plane, version, lambda job: job.future.set_result(error))) is error


def test_a_result_past_max_response_size_is_a_500(plane: DataPlane) -> None:
    version = plane.resolve("m", None)
    big = InferResult(200, "application/octet-stream", body=b"x" * 101)
    got = run(answered(plane, version, lambda job: job.future.set_result(big)))
    assert (got.status, got.content_type) == (500, ERROR_CONTENT_TYPE)
    assert b"101 bytes exceeds max_response_size (100)" in got.body


def test_a_caller_that_goes_away_abandons_its_job(plane: DataPlane) -> None:
    version = plane.resolve("m", None)

    async def leave() -> None:
        task = asyncio.ensure_future(plane.infer(version, Protocol.TORCHSERVE, b"x", "", {}, "r"))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(leave())
    assert fake(version).jobs[0].future.cancelled()


def test_an_outcome_is_counted_on_its_version(plane: DataPlane) -> None:
    version = plane.resolve("m", None)

    async def record() -> None:
        DataPlane.record(version, "m", None, "r", "POST", 207, 0.0)
        DataPlane.record(None, "nope", "1", "r", "POST", 404, 0.0)  # nothing to count it on: logged only

    run(record())
    assert fake(version).stats.requests[207] == 1
