"""Small generated models for the built-in handler tests (nothing downloaded)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

SEGMENTER_SOURCE = '''
import torch
from torch import nn


class TinySegmenter(nn.Module):
    """Returns {"out": [N, 3, H, W]} like torchvision's segmentation models: class 2 where the image is bright."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([0.0, 0.0, 10.0]))

    def forward(self, x):
        brightness = x.mean(dim=1, keepdim=True)
        scores = torch.cat([torch.zeros_like(brightness), torch.full_like(brightness, 0.5), brightness], dim=1)
        return {"out": scores * self.scale.view(1, 3, 1, 1) + torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1)}
'''

DETECTOR_SOURCE = '''
import torch
from torch import nn


class TinyDetector(nn.Module):
    """Returns boxes, labels and scores per image, as torchvision's detection models do."""

    def __init__(self):
        super().__init__()
        self.confidence = nn.Parameter(torch.tensor([0.9, 0.2]))

    def forward(self, images):
        results = []
        for image in images:
            height, width = image.shape[-2:]
            boxes = torch.tensor([[0.0, 0.0, float(width), float(height)], [1.0, 1.0, 2.0, 2.0]])
            results.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "scores": self.confidence.clone()})
        return results
'''


class TinyTextModel(nn.Module):
    def __init__(self, vocab_size: int, classes: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, 8)
        self.linear = nn.Linear(8, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.linear(self.embedding(tokens).mean(dim=1))
        return result


class Affine(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.0, 1.0]]))
            self.linear.bias.copy_(torch.tensor([0.5, -0.5]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.linear(x)
        return result


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def save_state(model: nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def affine_torchscript(path: Path) -> Path:
    torch.jit.save(torch.jit.trace(Affine().eval(), torch.zeros(1, 3)), str(path))  # type: ignore[no-untyped-call]
    return path


def affine_onnx(path: Path) -> Path:
    torch.onnx.export(
        Affine().eval(), (torch.zeros(1, 3),), str(path), input_names=["x"], output_names=["y"],
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, dynamo=False,
    )  # fmt: skip
    return path


def text_model(work: Path) -> tuple[Path, Path]:
    vocab = ["<pad>", "<unk>", "good", "great", "bad", "awful", "movie"]
    (work / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    model = TinyTextModel(len(vocab), 2).eval()
    with torch.no_grad():
        model.embedding.weight.zero_()
        model.embedding.weight[2:4, 0] = 1.0  # good, great
        model.embedding.weight[4:6, 1] = 1.0  # bad, awful
        model.linear.weight.copy_(torch.tensor([[-4.0, 4.0] + [0.0] * 6, [4.0, -4.0] + [0.0] * 6]))
        model.linear.bias.zero_()
    path = work / "text.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 4, dtype=torch.long)), str(path))  # type: ignore[no-untyped-call]
    return path, work / "vocab.txt"


def png_bytes(size: tuple[int, int] = (16, 16), value: int = 255, mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    color: Any = value if mode == "L" else (value, value, value)
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint does."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        import os

        return (os.system, (f"touch {self.marker}",))


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    torch.save({"weight": _RunsCode(marker)}, path)
    return path


OIP_TYPES = {
    "FP32": ("float32", 1), "FP64": ("float64", 11), "FP16": ("float16", 10), "INT8": ("int8", 3),
    "INT16": ("int16", 5), "INT32": ("int32", 6), "INT64": ("int64", 7), "UINT8": ("uint8", 2),
    "UINT16": ("uint16", 4), "BOOL": ("bool", 9), "BYTES": ("object", 8),
}  # fmt: skip


def identity_onnx(path: Path) -> Path:
    """An ONNX model with one input and one Identity output per datatype: x_FP32 -> y_FP32, ... (batch dim dynamic)."""
    from onnx import TensorProto, helper, save

    nodes, inputs, outputs = [], [], []
    for name, (_, elem) in OIP_TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"x_{name}", elem, ["batch", 3]))
        outputs.append(helper.make_tensor_value_info(f"y_{name}", elem, ["batch", 3]))
        nodes.append(helper.make_node("Identity", [f"x_{name}"], [f"y_{name}"]))
    graph = helper.make_graph(nodes, "identity", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert TensorProto.STRING == 8
    save(model, str(path))
    return path


def sample_inputs(rows: int = 2) -> dict[str, np.ndarray]:
    values: dict[str, np.ndarray] = {}
    for name, (dtype, _) in OIP_TYPES.items():
        if name == "BYTES":
            values[name] = np.asarray([[f"r{r}c{c}".encode() for c in range(3)] for r in range(rows)], dtype=object)
        elif name == "BOOL":
            values[name] = (np.arange(rows * 3).reshape(rows, 3) % 2).astype(bool)
        else:
            values[name] = (np.arange(rows * 3).reshape(rows, 3) - 2).astype(dtype)
            if name.startswith("UINT"):
                values[name] = np.abs(values[name])
    return values
