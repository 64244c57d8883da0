"""TorchServe's ``MicroBatching``: a batch split into micro-batches that flow through ``preprocess``, ``inference``
and ``postprocess`` running in their own threads, so the steps of neighbouring micro-batches overlap.

A handler wraps itself (``self.handle = MicroBatching(self, micro_batch_size=4)`` or calls it from ``handle``);
``parallelism`` sets the thread count per step (one each by default).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

HANDLER_METHODS = ("preprocess", "inference", "postprocess")
POLL_S = 0.5


class _StepThread:
    """One thread running one handler step on whatever its input queue holds, until told to stop."""

    def __init__(self, step: Callable[[Any], Any], inbox: queue.Queue[Any], outbox: queue.Queue[Any], local: Any):
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(step, inbox, outbox, local), daemon=True)
        self.thread.start()

    def _run(self, step: Callable[[Any], Any], inbox: queue.Queue[Any], outbox: queue.Queue[Any], local: Any) -> None:
        # items are (micro-batch index, data, the exception an earlier step raised or None)
        while not self.stop.is_set():
            try:
                index, data, failed = inbox.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if failed is not None:
                outbox.put((index, None, failed))  # passed along, so every micro-batch reaches the end
                continue
            local.micro_batch_idx = index
            try:
                outbox.put((index, step(data), None))
            except Exception as exc:  # re-raised by handle once the whole batch is back
                outbox.put((index, None, exc))


class MicroBatching:
    def __init__(self, parent_handler: Any, micro_batch_size: int = 1, parallelism: dict[str, int] | None = None):
        if micro_batch_size < 1:
            raise ValueError("micro_batch_size must be at least 1")
        self.handler = parent_handler
        self.micro_batch_size = micro_batch_size
        self._parallelism = dict(parallelism or {})
        self.thread_local_data = threading.local()
        self._queues: list[queue.Queue[Any]] = [queue.Queue() for _ in range(len(HANDLER_METHODS) + 1)]
        self._threads: dict[str, list[_StepThread]] = {name: [] for name in HANDLER_METHODS}
        self._lock = threading.Lock()
        self._update_threads()

    @property
    def parallelism(self) -> dict[str, int]:
        return dict(self._parallelism)

    @parallelism.setter
    def parallelism(self, parallelism: dict[str, int]) -> None:
        unknown = set(parallelism) - set(HANDLER_METHODS)
        if unknown:
            raise ValueError(f"parallelism is set per step ({', '.join(HANDLER_METHODS)}), not {sorted(unknown)}")
        self._parallelism.update(parallelism)
        self._update_threads()

    def _update_threads(self) -> None:
        for position, name in enumerate(HANDLER_METHODS):
            target = self._parallelism.get(name, 1)
            if target < 0:
                raise ValueError(f"parallelism of {name} must not be negative")
            group = self._threads[name]
            inbox, outbox = self._queues[position], self._queues[position + 1]
            while len(group) < target:
                group.append(_StepThread(getattr(self.handler, name), inbox, outbox, self.thread_local_data))
            while len(group) > target:
                surplus = group.pop()
                surplus.stop.set()
                surplus.thread.join()

    def shutdown(self) -> None:
        for group in self._threads.values():
            for step in group:
                step.stop.set()
            for step in group:
                step.thread.join()
            group.clear()

    def __del__(self) -> None:
        for group in getattr(self, "_threads", {}).values():
            for step in group:
                step.stop.set()

    def handle(self, data: list[Any]) -> list[Any]:
        """Run ``data`` through the three steps in micro-batches; results in the order of the requests."""
        with self._lock:  # one batch at a time: the queues carry no batch identity
            chunks = [data[i : i + self.micro_batch_size] for i in range(0, len(data), self.micro_batch_size)]
            for index, chunk in enumerate(chunks):
                self._queues[0].put_nowait((index, chunk, None))
            done: dict[int, Any] = {}
            errors: dict[int, BaseException] = {}
            while len(done) + len(errors) < len(chunks):
                index, output, failed = self._queues[-1].get()
                if failed is not None:
                    errors[index] = failed
                else:
                    done[index] = output
            if errors:
                raise errors[min(errors)]
            return [item for index in sorted(done) for item in done[index]]

    def get_micro_batch_idx(self) -> int | None:
        return getattr(self.thread_local_data, "micro_batch_idx", None)

    def __call__(self, data: list[Any], context: Any) -> list[Any]:
        """A ``handle(data, context)`` entry: describe and explain as the BaseHandler does, else micro-batches."""
        start = time.time()
        self.handler.context = context
        if self.handler._is_describe():
            output = [self.handler.describe_handle()]
        elif self.handler._is_explain():
            output = self.handler.explain_handle(self.handler.preprocess(data), data)
        else:
            output = self.handle(data)
        context.metrics.add_time("HandlerTime", round((time.time() - start) * 1000, 2), None, "ms")
        return output
