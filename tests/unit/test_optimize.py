"""The optimized form of a torch model: answers checked, chosen per shape by measurement, dropped when it misbehaves."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from modelserve import optimize
from modelserve.handler import BaseHandler, Context
from modelserve.optimize import RUN, WARMUP_CALLS, FormChooser, same_answer
from modelserve.runtimes.pytorch import TorchRuntime

CALLS_PER_SHAPE = WARMUP_CALLS + 2 * RUN


class SmallConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 8, 3)
        self.norm = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 6 * 6, 4)

    def forward(self, x: torch.Tensor) -> Any:
        return self.fc(torch.flatten(torch.relu(self.norm(self.conv(x))), 1))


class Unscriptable(nn.Module):
    def forward(self, x: Any) -> Any:
        return x * len({id(x)})  # a set comprehension over object ids: TorchScript cannot compile this


def scaled(module: nn.Module, factor: float) -> Any:
    copy = SmallConvNet()
    copy.load_state_dict(module.state_dict())
    with torch.no_grad():
        copy.fc.weight.mul_(factor)
    return torch.jit.script(copy.eval())


def run_shapes(chooser: FormChooser, batches: list[int], model: nn.Module) -> None:
    with torch.inference_mode():
        for batch in batches:
            x = torch.randn(batch, 1, 8, 8)
            for _ in range(CALLS_PER_SHAPE):
                assert same_answer(chooser(x), model(x))


def test_answers_match_the_plain_model_and_every_shape_is_decided() -> None:
    model = SmallConvNet().eval()
    chooser = FormChooser(torch.jit.script(model), "convnet")
    run_shapes(chooser, [2, 3], model)
    assert chooser.optimized is not None and not chooser.broken
    assert len(chooser.decided) == 2 and not chooser.trials


class FakeClock:
    """Time that advances only when a form runs: each form takes a known number of seconds."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def timed(self, form: Any, seconds: float) -> Any:
        def run(*args: Any) -> Any:
            self.now += seconds
            return form(*args)

        return run


@pytest.mark.parametrize(("plain_s", "optimized_s", "winner"), [(3.0, 1.0, "optimized"), (1.0, 3.0, "plain")])
def test_agreeing_shapes_with_a_batch_of_one_settle_and_release_the_loser(
    monkeypatch: pytest.MonkeyPatch, plain_s: float, optimized_s: float, winner: str
) -> None:
    model = SmallConvNet().eval()
    clock = FakeClock()
    monkeypatch.setattr(optimize, "clock", clock)
    released: list[Any] = []
    chooser = FormChooser(clock.timed(torch.jit.script(model), plain_s), "convnet", released.append)
    chooser.optimized = clock.timed(optimize.build_optimized(torch.jit.script(model)), optimized_s)
    run_shapes(chooser, [4, 2, 3], model)
    assert chooser.settled is None, "agreeing shapes without a batch of one do not settle"
    assert chooser.decided == dict.fromkeys(chooser.decided, winner == "optimized")
    run_shapes(chooser, [1], model)
    assert chooser.settled_on == winner
    if winner == "optimized":
        assert released == [chooser.settled] and chooser.plain is None
    else:
        assert chooser.optimized is None and released == []


def test_shapes_that_disagree_keep_both_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    model = SmallConvNet().eval()
    clock = FakeClock()
    monkeypatch.setattr(optimize, "clock", clock)
    plain = torch.jit.script(model)
    optimized = optimize.build_optimized(torch.jit.script(model))

    def plain_form(x: torch.Tensor) -> Any:
        clock.now += 2.0 if x.shape[0] > 1 else 0.0
        return plain(x)

    def optimized_form(x: torch.Tensor) -> Any:
        clock.now += 1.0  # slower than plain for a batch of one, faster for larger batches
        return optimized(x)

    chooser = FormChooser(plain_form, "convnet")
    chooser.optimized = optimized_form
    run_shapes(chooser, [1, 2, 3, 4], model)
    assert {key[0][0][0]: faster for key, faster in chooser.decided.items()} == {1: False, 2: True, 3: True, 4: True}
    assert chooser.settled is None and chooser.plain is plain_form and chooser.optimized is optimized_form


def test_a_different_answer_drops_the_optimized_form(caplog: pytest.LogCaptureFixture) -> None:
    model = SmallConvNet().eval()
    chooser = FormChooser(torch.jit.script(model), "convnet")
    chooser.optimized = scaled(model, 1.5)  # a faulty optimizer: same structure, other weights
    caplog.set_level(logging.WARNING, "modelserve.optimize")
    run_shapes(chooser, [2], model)  # every answer is still the plain model's
    assert chooser.broken and chooser.settled_on == "plain" and chooser.optimized is None
    assert "answered differently" in caplog.text


def test_an_optimized_form_that_fails_alone_is_dropped() -> None:
    model = SmallConvNet().eval()
    chooser = FormChooser(torch.jit.script(model), "convnet")

    def failing(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("oneDNN: unsupported")

    chooser.optimized = failing
    run_shapes(chooser, [2], model)
    assert chooser.broken and chooser.settled_on == "plain"


def test_an_input_error_still_reaches_the_caller() -> None:
    model = SmallConvNet().eval()
    chooser = FormChooser(torch.jit.script(model), "convnet")
    with pytest.raises(RuntimeError), torch.inference_mode():
        chooser(torch.randn(2, 3, 8, 8))  # three channels for a one-channel convolution
    assert not chooser.broken


def test_a_model_torch_cannot_script_runs_plain() -> None:
    chooser = FormChooser(Unscriptable(), "eager")
    x = torch.ones(2)
    assert torch.equal(chooser(x), x)
    assert chooser.settled_on == "plain" and not chooser.broken


def test_non_tensor_inputs_run_plain() -> None:
    model = SmallConvNet().eval()
    chooser = FormChooser(torch.jit.script(model), "convnet")
    with torch.inference_mode():
        chooser.plain = lambda xs: [model(x) for x in xs]
        assert len(chooser([torch.randn(1, 1, 8, 8)])) == 1
    assert chooser.optimized is None and not chooser.decided


def test_same_answer_compares_structure_and_values() -> None:
    a = torch.tensor([1.0, 2.0])
    assert same_answer({"x": [a, (a,)]}, {"x": [a.clone(), (a + 1e-7,)]})
    assert not same_answer(a, a + 0.1)
    assert not same_answer(a, a.double())
    assert not same_answer([a], [a, a])
    assert not same_answer(torch.tensor([1, 2]), torch.tensor([1, 3]))


def handler_for(tmp_path: Path, config: dict[str, Any]) -> BaseHandler:
    model = torch.jit.script(SmallConvNet().eval())
    torch.jit.save(model, str(tmp_path / "model.pt"))
    manifest = {"model": {"modelName": "m", "serializedFile": "model.pt", "handler": "h.py"}}
    handler = BaseHandler()
    handler.initialize(Context("m", "1.0", str(tmp_path), manifest, 4, config, 1))
    return handler


def test_the_handler_enables_optimization_unless_configured_off(tmp_path: Path) -> None:
    on = handler_for(tmp_path, {})
    assert isinstance(on.model, TorchRuntime) and on.model.forms is not None
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    for _ in range(CALLS_PER_SHAPE):
        np.testing.assert_allclose(on.inference(x), on.model.model(torch.from_numpy(x)).detach().numpy(), rtol=1e-4)
    off = handler_for(tmp_path, {"optimize": False})
    assert off.model.forms is None


def test_a_large_model_settles_on_its_first_measured_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optimize, "KEEP_BOTH_BYTES", 0)  # every model counts as large
    model = SmallConvNet().eval()
    clock = FakeClock()
    monkeypatch.setattr(optimize, "clock", clock)
    chooser = FormChooser(clock.timed(torch.jit.script(model), 3.0), "convnet")
    assert not chooser.keep_both
    chooser.optimized = clock.timed(optimize.build_optimized(torch.jit.script(model)), 1.0)
    run_shapes(chooser, [4], model)
    assert chooser.settled_on == "optimized" and chooser.plain is None
    run_shapes(chooser, [2], model)  # a later shape goes straight to the settled form
    assert len(chooser.decided) == 1


def test_a_large_model_measures_again_before_giving_up_the_optimized_form(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(optimize, "KEEP_BOTH_BYTES", 0)
    model = SmallConvNet().eval()
    clock = FakeClock()
    monkeypatch.setattr(optimize, "clock", clock)
    chooser = FormChooser(clock.timed(torch.jit.script(model), 1.0), "convnet")
    chooser.optimized = clock.timed(optimize.build_optimized(torch.jit.script(model)), 3.0)
    run_shapes(chooser, [4], model)
    assert chooser.settled is None and chooser.plain_wins == 1 and not chooser.decided
    with torch.inference_mode():
        x = torch.randn(4, 1, 8, 8)
        for _ in range(2 * RUN * (optimize.LARGE_PLAIN_WINS - 1)):  # measured again without warm-up calls
            chooser(x)
    assert chooser.settled_on == "plain" and chooser.optimized is None
