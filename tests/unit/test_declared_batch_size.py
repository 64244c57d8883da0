"""Which handlers batch by default: ``default_batch_size`` on the handler's own class, on the instance, or on the
module of a function handler; never inherited; nonsense values ignored. And which settings count as configured."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from modelserve.config import ModelConfig, ServerConfig
from modelserve.handler import BaseHandler, declared_batch_size
from modelserve.tscompat import expose_ts_package


class Declaring(BaseHandler):
    default_batch_size = 8


class Inheriting(Declaring):
    pass


class Redeclaring(Declaring):
    default_batch_size = 2


def _function(data: Any, context: Any) -> list[Any]:
    return []


def test_own_class_attribute_counts_and_an_inherited_one_does_not() -> None:
    assert declared_batch_size(Declaring().handle, Declaring()) == 8
    assert declared_batch_size(Inheriting().handle, Inheriting()) == 0
    assert declared_batch_size(Redeclaring().handle, Redeclaring()) == 2
    assert declared_batch_size(BaseHandler().handle, BaseHandler()) == 0


def test_initialize_may_set_it_on_the_instance() -> None:
    fixed = Declaring()
    fixed.default_batch_size = 1  # e.g. a model with a fixed batch dimension
    assert declared_batch_size(fixed.handle, fixed) == 1
    opted_in = Inheriting()
    opted_in.default_batch_size = 4
    assert declared_batch_size(opted_in.handle, opted_in) == 4


def test_a_function_handler_declares_it_on_its_module(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("declaring_handler_module")
    module.handle = _function  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "declaring_handler_module", module)
    function = types.FunctionType(_function.__code__, {}, "handle")
    function.__module__ = "declaring_handler_module"
    assert declared_batch_size(function, None) == 0
    module.default_batch_size = 16  # type: ignore[attr-defined]
    assert declared_batch_size(function, None) == 16


@pytest.mark.parametrize("value", [0, -1, 5000, True, "8", 8.0, None])
def test_values_that_are_not_a_batch_size_are_ignored(value: object) -> None:
    handler = BaseHandler()
    handler.default_batch_size = value  # type: ignore[attr-defined]
    assert declared_batch_size(handler.handle, handler) == 0


def test_torchserve_vision_built_ins_declare_it_and_their_subclasses_do_not() -> None:
    assert expose_ts_package() is True
    from ts.torch_handler.image_classifier import ImageClassifier
    from ts.torch_handler.text_classifier import TextClassifier

    class Custom(ImageClassifier):
        pass

    assert declared_batch_size(ImageClassifier().handle, ImageClassifier()) == 8
    assert declared_batch_size(Custom().handle, Custom()) == 0
    # TorchServe's text classifier reads the first request of a batch only
    assert declared_batch_size(TextClassifier().handle, TextClassifier()) == 0


def test_a_batch_size_counts_as_configured_only_when_someone_set_it() -> None:
    default = ModelConfig.defaults(ServerConfig())
    assert (default.batch_size, default.batch_size_explicit) == (1, False)
    assert ModelConfig.defaults(ServerConfig(batch_size=1)).batch_size_explicit is True
    assert ModelConfig.defaults(ServerConfig(batch_size=4)).batch_size == 4
    from_yaml = default.updated({"batchSize": 1}, "model-config.yaml")
    assert (from_yaml.batch_size, from_yaml.batch_size_explicit) == (1, True)
    assert default.updated({"batchSize": None, "maxBatchDelay": 5}, "registration").batch_size_explicit is False
