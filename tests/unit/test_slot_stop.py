"""A worker slot stops even when the cancellation of its worker's start is lost (Python 3.11's asyncio.wait_for drops
a cancellation that arrives in the same step as the awaited reply): the unregister waiting for it must not hang."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from modelserve.workers import pool as pool_module


class _FakeWorker:
    worker_id = "fake-1"
    signature: dict[str, Any] = {}

    def __init__(self) -> None:
        self.stopped = False
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def wait_exit(self) -> int:
        return await asyncio.shield(self._exit)

    async def stop(self) -> None:
        self.stopped = True
        if not self._exit.done():
            self._exit.set_result(0)

    async def kill(self) -> None:
        await self.stop()


class _FakePool:
    label = "m:1.0"

    def kick(self) -> None:
        pass


def test_stop_returns_when_the_start_swallowed_its_cancellation(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> None:
        started = asyncio.Event()
        release = asyncio.Event()
        workers: list[_FakeWorker] = []

        async def start_that_loses_the_cancel(self: Any) -> _FakeWorker:
            started.set()
            # what wait_for does in 3.11 when the reply arrives in the same step: the cancellation is gone
            with contextlib.suppress(asyncio.CancelledError):
                await release.wait()
            worker = _FakeWorker()
            workers.append(worker)
            return worker

        monkeypatch.setattr(pool_module._Slot, "_start_worker", start_that_loses_the_cancel)
        slot = pool_module._Slot(_FakePool(), 0)  # type: ignore[arg-type]
        await asyncio.wait_for(started.wait(), 5)
        stopping = asyncio.ensure_future(slot.stop())
        # not wait_for: cancelling stop() on a timeout would cancel the slot's task and hide the hang
        finished, _ = await asyncio.wait({stopping}, timeout=3)
        if not finished:
            slot.task.cancel()
            await asyncio.gather(stopping, return_exceptions=True)
        assert finished, "stop() hung: nobody resolved the serving slot's future"
        assert slot.task.done() and not slot.accepting
        assert len(workers) == 1 and workers[0].stopped

    asyncio.run(scenario())
