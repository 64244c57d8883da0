"""A faster form of a torch model for CPU inference, used only where it measures faster and answers the same.

PyTorch's default CPU path runs small convolutions much slower than its oneDNN path does on a frozen graph (the
reference ConvNet here: about 380 us per image in batches of 16 plain, 120 us frozen and optimized). The frozen
form is not always faster (it converts layouts on every call, which costs more than it saves at batch size 1 on a
small model), and freezing can fail or change a model that mutates its own attributes. So, on CPU:

- the optimized form (``torch.jit.freeze`` then ``torch.jit.optimize_for_inference``; eager models are scripted
  first) is built on the first call, not at load, so start-up time is unchanged;
- for each input shape, the first two calls run both forms and the answers must agree (the plain answer is
  returned); a disagreement, or an exception from the optimized form only, drops it for good;
- the next calls run each form a few times in a row, timed; the optimized form is kept for that shape only when its
  best time is at least ``MIN_GAIN`` faster;
- a small model (weights under ``KEEP_BOTH_BYTES``) keeps both forms until a few shapes, a batch of one among them,
  agree on the winner; when shapes disagree (typically: plain for a batch of one, optimized for larger batches)
  both stay, each used where it won. A larger model settles for every shape as soon as the optimized form wins a
  shape, or once the plain form has won ``LARGE_PLAIN_WINS`` measurements (a single measurement on a busy machine
  is not enough to give up a form that is usually faster): two copies of its weights would cost more memory than a
  per-shape choice gains. Settling releases the losing form (the plain module only when the handler said it no
  longer needs it) and hands the freed memory back to the system.

Turn it off per model with ``optimize: false`` in model-config.yaml.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("modelserve.optimize")
clock = time.perf_counter  # module-level so tests can give the forms known durations

WARMUP_CALLS = 2  # per shape: both forms run, answers compared (the profiling executor settles in two calls)
RUN = 3  # then, per shape, RUN calls of the plain form and RUN of the optimized one; the first of each run warms
# the caches for that form (the two forms do not fit the caches together) and is not counted
MIN_GAIN = 0.05  # the optimized form must be this much faster to be used
SETTLE_AGREEING = 3  # this many shapes with the same winner (a batch of one among them) settle the choice
KEEP_BOTH_BYTES = 16 << 20  # weights under this size may stay resident in both forms
LARGE_PLAIN_WINS = 3  # measurements the plain form must win before a large model gives up the optimized one
MAX_SHAPES = 64  # shapes decided or under trial; beyond this, new shapes use the current majority


@dataclass
class _Trial:
    calls: int = 0
    plain: list[float] = field(default_factory=list)
    optimized: list[float] = field(default_factory=list)


def _shape_key(args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    import torch

    key: list[Any] = []
    for arg in args:
        if not isinstance(arg, torch.Tensor):
            return None
        key.append((tuple(arg.shape), str(arg.dtype)))
    return tuple(key)


def _batch_of_one(key: tuple[Any, ...]) -> bool:
    shape: tuple[int, ...] = key[0][0] if key else ()
    return bool(shape) and shape[0] == 1


def same_answer(a: Any, b: Any) -> bool:
    """Whether two model outputs agree: same structure, shapes and dtypes; floats within a relative tolerance."""
    import torch

    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_mkldnn:
            a = a.to_dense()
        if b.is_mkldnn:
            b = b.to_dense()
        if not a.is_floating_point():
            return bool(torch.equal(a, b))
        scale = float(a.abs().nan_to_num(0.0, 0.0, 0.0).max()) if a.numel() else 0.0
        return bool(torch.allclose(a, b, rtol=1e-3, atol=1e-4 * max(1.0, scale), equal_nan=True))
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_answer(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_answer(a[k], b[k]) for k in a)
    return type(a) is type(b) and bool(a == b)


def weight_bytes(module: Any) -> int:
    """Bytes of a module's parameters and buffers (0 for anything that is not a torch module)."""
    try:
        tensors = [*module.parameters(), *module.buffers()]
    except (AttributeError, TypeError, RuntimeError):
        return 0
    return sum(t.numel() * t.element_size() for t in tensors)


def build_optimized(module: Any) -> Any:
    """The frozen, inference-optimized form of a module (eager modules are scripted first); raises if impossible."""
    import torch

    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")  # torch marks freeze/optimize_for_inference deprecated in favour of compile
        scripted = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.script(module)
        scripted.eval()
        return torch.jit.optimize_for_inference(torch.jit.freeze(scripted))


class FormChooser:
    """Calls a torch module through its plain or its optimized form, whichever measured faster for the input shape."""

    def __init__(self, plain: Any, name: str, on_settled: Callable[[Any], None] | None = None) -> None:
        self.plain: Any = plain
        self.optimized: Any = None
        self.name = name
        self.on_settled = on_settled  # told the settled form when the plain one may be released
        self.settled: Any = None
        self.broken = False
        self.trials: dict[tuple[Any, ...], _Trial] = {}
        self.decided: dict[tuple[Any, ...], bool] = {}  # shape -> the optimized form is faster
        self.keep_both = weight_bytes(plain) < KEEP_BOTH_BYTES
        self.plain_wins = 0  # measurements won by the plain form (large models re-measure before settling on it)
        self.verified: set[tuple[Any, ...]] = set()  # shapes whose answers agreed: a new measurement skips warm-up

    @property
    def settled_on(self) -> str:
        if self.settled is None:
            return "undecided"
        return "optimized" if self.settled is self.optimized else "plain"

    def __call__(self, *args: Any) -> Any:
        if self.settled is not None:
            return self.settled(*args)
        key = _shape_key(args)
        if key is None:
            return self.plain(*args)
        decision = self.decided.get(key)
        if decision is not None:
            return (self.optimized if decision else self.plain)(*args)
        if self.optimized is None and not self._build():
            return self.plain(*args)
        trial = self.trials.get(key)
        if trial is None:
            if len(self.trials) + len(self.decided) >= MAX_SHAPES:
                return (self.optimized if self._majority() else self.plain)(*args)
            trial = self.trials[key] = _Trial(calls=WARMUP_CALLS if key in self.verified else 0)
        return self._trial_call(key, trial, args)

    def _build(self) -> bool:
        started = time.perf_counter()
        try:
            self.optimized = build_optimized(self.plain)
        except Exception as exc:  # any model torch cannot script or freeze keeps its plain form
            log.info("%s: no optimized form (%s: %s); the plain model is used", self.name, type(exc).__name__, exc)
            self._settle(optimized=False)
            return False
        log.debug("%s: optimized form built in %.0f ms", self.name, (time.perf_counter() - started) * 1000)
        return True

    def _trial_call(self, key: tuple[Any, ...], trial: _Trial, args: tuple[Any, ...]) -> Any:
        call = trial.calls
        trial.calls += 1
        if call < WARMUP_CALLS:
            answer = self.plain(*args)  # the plain answer is returned; an input error from it goes to the caller
            try:
                other = self.optimized(*args)
            except Exception as exc:
                self._give_up(f"the optimized form failed where the plain one answered ({type(exc).__name__}: {exc})")
                return answer
            if not same_answer(answer, other):
                self._give_up("the optimized form answered differently")
            return answer
        position = call - WARMUP_CALLS
        use_optimized = position >= RUN
        started = clock()
        if use_optimized:
            try:
                answer = self.optimized(*args)
            except Exception as exc:
                answer = self.plain(*args)  # raises the input error the plain form gives, if it gives one
                self._give_up(f"the optimized form failed where the plain one answered ({type(exc).__name__}: {exc})")
                return answer
            if position % RUN:
                trial.optimized.append(clock() - started)
        else:
            answer = self.plain(*args)
            if position % RUN:
                trial.plain.append(clock() - started)
        if position + 1 >= 2 * RUN:
            faster = min(trial.optimized) < (1 - MIN_GAIN) * min(trial.plain)
            del self.trials[key]
            self.verified.add(key)
            if not faster:
                self.plain_wins += 1
            if faster or self.keep_both or self.plain_wins >= LARGE_PLAIN_WINS:
                self.decided[key] = faster
            log.debug(
                "%s: shape %s: plain %.3f ms, optimized %.3f ms -> %s", self.name, key,
                min(trial.plain) * 1000, min(trial.optimized) * 1000,
                "optimized" if faster else "plain",
            )  # fmt: skip
            self._maybe_settle()
        return answer

    def _majority(self) -> bool:
        wins = sum(self.decided.values())
        return wins * 2 > len(self.decided)

    def _maybe_settle(self) -> None:
        winners = set(self.decided.values())
        if not self.keep_both and winners:
            self._settle(optimized=any(winners))
        elif len(self.decided) >= SETTLE_AGREEING and len(winners) == 1 and any(map(_batch_of_one, self.decided)):
            self._settle(optimized=winners.pop())

    def _give_up(self, reason: str) -> None:
        log.warning("%s: %s; the plain model is used from now on", self.name, reason)
        self.broken = True
        self._settle(optimized=False)

    def _settle(self, optimized: bool) -> None:
        self.settled = self.optimized if optimized else self.plain
        if not self.broken:
            log.info("%s: the %s form is used from now on (%d shapes measured)", self.name,
                     "optimized" if optimized else "plain", len(self.decided))  # fmt: skip
        if optimized:
            self.plain = None
            if self.on_settled is not None:
                self.on_settled(self.settled)
        else:
            self.optimized = None
        self.trials.clear()
        release_memory()


def release_memory() -> None:
    """Collect garbage and hand free heap pages back to the system (glibc's malloc_trim; a no-op elsewhere)."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)
