"""The runtime table: each format detected from its manifest, named, loaded and run on numpy, its tensors described."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.torch import save_file

from modelserve.archive.manifest import Manifest
from modelserve.handler import BadInputError, BaseHandler, Context, HandlerError
from modelserve.runtimes import (
    RUNTIMES,
    ModelRuntime,
    UnknownFormatError,
    detect,
    load_model,
    needs_torch,
    platform_for,
)
from modelserve.runtimes.eager import EagerRuntime
from modelserve.runtimes.onnx import OnnxRuntime
from modelserve.runtimes.safetensors import SafetensorsRuntime
from modelserve.runtimes.torchscript import TorchScriptRuntime
from tests.support import models

EAGER_SOURCE = """
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        return self.linear(x)
"""
X = np.asarray([[1.0, 1.0, 1.0], [0.0, 1.0, 2.0]], dtype=np.float32)
Y = np.asarray([[6.5, -0.5], [8.5, 1.5]], dtype=np.float32)  # models.Affine's weights applied to X


def manifest(serialized: str | None = None, model_file: str | None = None) -> Manifest:
    return Manifest(model_name="m", handler="handler.py", serialized_file=serialized, model_file=model_file)


@pytest.mark.parametrize(
    ("serialized", "model_file", "expected"),
    [
        ("model.pt", None, TorchScriptRuntime),
        ("model.torchscript", None, TorchScriptRuntime),
        ("model.bin", None, TorchScriptRuntime),
        ("weights.pth", "net.py", EagerRuntime),
        ("weights.pt", "net.py", EagerRuntime),
        (None, "net.py", EagerRuntime),
        ("weights.safetensors", "net.py", SafetensorsRuntime),
        ("weights.safetensors", None, SafetensorsRuntime),
        ("model.onnx", None, OnnxRuntime),
        ("model.ort", None, OnnxRuntime),
        ("sub/Model.ONNX", None, OnnxRuntime),
        (None, None, None),
    ],
)
def test_the_table_detects_each_format_from_the_manifest(
    serialized: str | None, model_file: str | None, expected: type[ModelRuntime] | None
) -> None:
    assert detect(manifest(serialized, model_file)) is expected


@pytest.mark.parametrize(
    ("serialized", "model_file", "platform", "torch"),
    [
        ("model.pt", None, "pytorch_libtorch", True),
        ("model.torchscript", None, "pytorch_libtorch", True),
        ("weights.pth", "net.py", "pytorch_libtorch", True),
        ("weights.safetensors", "net.py", "pytorch_libtorch", True),
        ("model.onnx", None, "onnxruntime_onnx", False),
        ("model.ort", None, "onnxruntime_onnx", False),
        (None, None, "python", False),
        ("model.joblib", None, "python", False),  # a file the handler reads by itself
    ],
)
def test_platform_names_and_torch_need_follow_the_format(
    serialized: str | None, model_file: str | None, platform: str, torch: bool
) -> None:
    described = manifest(serialized, model_file)
    assert platform_for(described) == platform
    assert needs_torch(described) is torch


def test_an_unknown_suffix_names_the_file_and_the_known_suffixes(tmp_path: Path) -> None:
    with pytest.raises(UnknownFormatError) as caught:
        detect(manifest("model.joblib"))
    message = str(caught.value)
    assert "model.joblib" in message and "'.joblib'" in message
    for runtime in RUNTIMES:
        assert all(suffix in message for suffix in runtime.suffixes)
    with pytest.raises(UnknownFormatError, match=r"weights\.torchscript with model file net\.py"):
        load_model(tmp_path, manifest("weights.torchscript", "net.py").to_dict(), 1)


def test_importing_the_table_and_asking_it_imports_neither_torch_nor_onnxruntime() -> None:
    probe = (
        "import sys\n"
        "from modelserve.archive.manifest import Manifest\n"
        "from modelserve.runtimes import needs_torch, platform_for\n"
        "for name in ('m.pt', 'm.onnx', 'm.safetensors'):\n"
        "    m = Manifest(model_name='m', handler='h.py', serialized_file=name, model_file='net.py')\n"
        "    platform_for(m), needs_torch(m)\n"
        "print(sorted(n for n in ('torch', 'onnxruntime', 'safetensors') if n in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def test_a_handler_only_archive_loads_no_model(tmp_path: Path) -> None:
    assert load_model(tmp_path, manifest().to_dict(), 1) is None


def check_affine(model: ModelRuntime | None, runtime: type[ModelRuntime]) -> None:
    assert type(model) is runtime
    np.testing.assert_allclose(model.run(X), Y, rtol=1e-6)
    outputs = model.run_named({"x": X})
    assert len(outputs) == 1
    np.testing.assert_allclose(outputs[0], Y, rtol=1e-6)


def test_torchscript_loads_and_runs_on_numpy(tmp_path: Path) -> None:
    models.affine_torchscript(tmp_path / "affine.pt")
    check_affine(load_model(tmp_path, manifest("affine.pt").to_dict(), 1), TorchScriptRuntime)


def test_eager_loads_its_state_dict_and_runs_on_numpy(tmp_path: Path) -> None:
    models.write(tmp_path / "net.py", EAGER_SOURCE)
    models.save_state(models.Affine(), tmp_path / "affine.pth")
    check_affine(load_model(tmp_path, manifest("affine.pth", "net.py").to_dict(), 1), EagerRuntime)


def test_safetensors_weights_load_into_the_model_file(tmp_path: Path) -> None:
    models.write(tmp_path / "net.py", EAGER_SOURCE)
    save_file(models.Affine().state_dict(), str(tmp_path / "affine.safetensors"))
    check_affine(load_model(tmp_path, manifest("affine.safetensors", "net.py").to_dict(), 1), SafetensorsRuntime)


def test_safetensors_without_a_model_file_says_what_is_missing(tmp_path: Path) -> None:
    save_file(models.Affine().state_dict(), str(tmp_path / "affine.safetensors"))
    with pytest.raises(HandlerError, match=r"affine\.safetensors holds weights only.*--model-file"):
        load_model(tmp_path, manifest("affine.safetensors").to_dict(), 1)


def test_onnx_loads_and_runs_on_numpy(tmp_path: Path) -> None:
    models.affine_onnx(tmp_path / "affine.onnx")
    model = load_model(tmp_path, manifest("affine.onnx").to_dict(), 1)
    check_affine(model, OnnxRuntime)
    assert model is not None
    np.testing.assert_allclose(model.run({"x": X}), Y, rtol=1e-6)


@pytest.mark.parametrize("serialized", ["affine.pt", "affine.onnx"])
def test_a_badly_shaped_input_is_a_bad_input_error(tmp_path: Path, serialized: str) -> None:
    models.affine_torchscript(tmp_path / "affine.pt")
    models.affine_onnx(tmp_path / "affine.onnx")
    model = load_model(tmp_path, manifest(serialized).to_dict(), 1)
    assert model is not None
    with pytest.raises(BadInputError, match="the model rejected the input"):
        model.run_named({"x": np.zeros((2, 5), dtype=np.float32)})


def test_onnx_signatures_use_oip_datatypes(tmp_path: Path) -> None:
    models.identity_onnx(tmp_path / "identity.onnx")
    model = load_model(tmp_path, manifest("identity.onnx").to_dict(), 1)
    assert model is not None
    signature = model.signature()
    assert signature["inputs"] == [{"name": f"x_{t}", "datatype": t, "shape": [-1, 3]} for t in models.OIP_TYPES]
    assert signature["outputs"] == [{"name": f"y_{t}", "datatype": t, "shape": [-1, 3]} for t in models.OIP_TYPES]


def handler_on(tmp_path: Path, config: dict[str, Any]) -> BaseHandler:
    models.affine_onnx(tmp_path / "affine.onnx")
    handler = BaseHandler()
    handler.initialize(Context("m", "1.0", str(tmp_path), manifest("affine.onnx").to_dict(), 1, config, 1))
    return handler


def test_the_base_handler_signature_is_the_models_unless_configured(tmp_path: Path) -> None:
    plain = handler_on(tmp_path, {})
    assert plain.signature() == {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    }
    configured = [{"name": "features", "datatype": "FP64", "shape": [-1, 3]}]
    assert handler_on(tmp_path, {"inputs": configured}).signature() == {
        "inputs": configured,
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}],
    }


def test_onnx_sessions_do_not_spin_between_runs(tmp_path: Path) -> None:
    models.affine_onnx(tmp_path / "affine.onnx")
    model = load_model(tmp_path, manifest("affine.onnx").to_dict(), 2)
    assert isinstance(model, OnnxRuntime)
    options = model.model.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.inter_op.allow_spinning") == "0"


def test_the_onnx_handler_refuses_a_model_that_is_not_tabular_and_names_the_tensor_handler(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, save

    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 28, 28])
    same = helper.make_tensor_value_info("same", TensorProto.FLOAT, ["batch", 1, 28, 28])
    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["same"])], "images", [image], [same])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(tmp_path / "images.onnx"))
    handler = importlib.import_module("modelserve.builtin_handlers.onnx").OnnxTabular()  # packaged from handlers/
    context = Context("m", "1.0", str(tmp_path), manifest("images.onnx").to_dict(), 1, {}, 1)
    with pytest.raises(ValueError, match=r"tabular models.*takes image \[-1, 1, 28, 28\]: use the tensor handler"):
        handler.initialize(context)
