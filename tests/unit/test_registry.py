"""The registry on a fake worker backend: a registration whose workers cannot load leaves nothing behind (no entry,
no extracted files, the backend told), a good one is served by the backend it was given, and stopping stops it."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from modelserve.archive.packer import PackRequest, pack_archive
from modelserve.config import ServerConfig
from modelserve.errors import ModelLoadError, ModelNotFoundError
from modelserve.models.registry import ModelRegistry, RegisterOptions
from modelserve.models.store import ModelSource
from tests.support.fake_backend import FakeBackend


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coroutine, 20))


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    handler = tmp_path / "src" / "echo.py"
    handler.parent.mkdir()
    handler.write_text("def handle(data, context):\n    return data\n")
    return pack_archive(PackRequest(model_name="echo", handler=str(handler), export_path=tmp_path))


def registry(tmp_path: Path, backend: FakeBackend) -> ModelRegistry:
    work = tmp_path / "work"
    work.mkdir()
    return ModelRegistry(ServerConfig(max_model_load_failures=2), work, backend)


def test_a_registration_whose_workers_cannot_load_is_rolled_back(tmp_path: Path, archive: Path) -> None:
    async def scenario() -> None:
        backend = FakeBackend(load_errors=["ImportError: no module named nowhere"] * 2)
        models = registry(tmp_path, backend)
        with pytest.raises(ModelLoadError, match="no module named nowhere"):
            await models.register(ModelSource(url="echo.mar", path=archive), RegisterOptions(initial_workers=1))
        assert models.models == {} and models.defaults == {}
        with pytest.raises(ModelNotFoundError):
            models.get("echo")
        assert list((tmp_path / "work").iterdir()) == []  # the extracted archive is gone
        assert [spec.label for spec in backend.released] == ["echo:1.0"]
        assert backend.live() == []

    run(scenario())


def test_a_registration_runs_its_workers_on_the_given_backend(tmp_path: Path, archive: Path) -> None:
    async def scenario() -> None:
        backend = FakeBackend()
        models = registry(tmp_path, backend)
        version = await models.register(ModelSource(url="echo.mar", path=archive), RegisterOptions(initial_workers=2))
        assert models.get("echo") is version and version.state.value == "READY"
        assert [spec.label for spec in backend.prepared] == ["echo:1.0"]
        assert backend.prepared[0].needs_torch is False  # a plain Python handler: no torch template
        assert len(backend.live()) == 2
        init = backend.handles[0].init
        assert init is not None and init.model_name == "echo" and init.handler.endswith("echo.py")
        described = version.describe()
        assert [w["node"] for w in described["workers"]] == ["fake-node", "fake-node"]
        assert models.thread_count(version.config) == 8 // 2  # the backend's cores shared by its workers
        await models.stop_all(1.0)
        assert backend.stopped and backend.live() == []
        assert list((tmp_path / "work").iterdir()) == []

    run(scenario())
