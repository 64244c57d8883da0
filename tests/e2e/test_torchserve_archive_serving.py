"""An archive made by torch-model-archiver 0.12.0 with a TorchServe built-in handler name is served as is."""

from __future__ import annotations

import json
import subprocess
from io import BytesIO
from pathlib import Path

import torch
from PIL import Image

from tests.support.paths import script
from tests.support.server import running_server

TINY_CLASSIFIER = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))
"""


def test_torch_model_archiver_mar_with_builtin_handler_name_serves(tmp_path: Path, store: Path) -> None:
    (tmp_path / "tiny.py").write_text(TINY_CLASSIFIER)
    namespace: dict[str, object] = {}
    exec(compile(TINY_CLASSIFIER, "tiny.py", "exec"), namespace)
    model = namespace["Tiny"]()  # type: ignore[operator]
    with torch.no_grad():
        model.fc.weight.copy_(torch.eye(3) * 10)  # the brightest channel wins
        model.fc.bias.zero_()
    torch.save(model.state_dict(), tmp_path / "tiny.pth")
    (tmp_path / "index_to_name.json").write_text(json.dumps({"0": "red", "1": "green", "2": "blue"}))
    made = subprocess.run(
        [script("torch-model-archiver"), "--model-name", "tiny", "--version", "1.0", "--model-file", "tiny.py",
         "--serialized-file", "tiny.pth", "--handler", "image_classifier", "--extra-files", "index_to_name.json",
         "--export-path", str(store)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    with running_server(tmp_path, store, ["tiny.mar"], extra_args=["--ncs"]) as server:
        buffer = BytesIO()
        Image.new("RGB", (40, 30), (10, 10, 250)).save(buffer, format="PNG")
        response = server.predict("tiny", buffer.getvalue())
        assert response.status == 200, response.text
        scores = response.json()
        assert next(iter(scores)) == "blue" and set(scores) == {"red", "green", "blue"}
        assert server.manage("GET", "/models/tiny").json()[0]["handler"] == "image_classifier"
