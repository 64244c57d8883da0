"""The real TorchServe 0.12.0 and modelserve serve one torch-model-archiver archive in one test run, alike."""

from __future__ import annotations

import json
import socket
import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.support import torchserve
from tests.support.paths import script
from tests.support.server import running_server
from tests.support.torchserve import free_ports, running_torchserve

# TorchServe's image_classifier returns its top 5: the model needs more than 5 classes
EIGHT_CLASSES = """
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 8)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(x), 1))
"""
LABELS = ["red", "orange", "yellow", "green", "cyan", "blue", "violet", "black"]


def tiny_archive(tmp_path: Path, store: Path) -> None:
    """A seeded 8-class model, archived by torch-model-archiver 0.12.0 with the built-in handler name."""
    source = tmp_path / "src"
    source.mkdir()
    (source / "tiny.py").write_text(EIGHT_CLASSES)
    namespace: dict[str, object] = {}
    exec(compile(EIGHT_CLASSES, "tiny.py", "exec"), namespace)
    torch.manual_seed(7)
    model = namespace["Tiny"]()  # type: ignore[operator]
    with torch.no_grad():
        model.fc.weight.mul_(3)  # logits a few units apart: no probability rounds to 0 or 1
    torch.save(model.state_dict(), source / "tiny.pth")
    (source / "index_to_name.json").write_text(json.dumps(dict(enumerate(LABELS))))
    made = subprocess.run(
        [script("torch-model-archiver"), "--model-name", "tiny", "--version", "1.0", "--model-file", "tiny.py",
         "--serialized-file", "tiny.pth", "--handler", "image_classifier", "--extra-files", "index_to_name.json",
         "--export-path", str(store)],
        cwd=source, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr


def sample_image() -> bytes:
    """Not square, not 256 on a side, uneven colours: resize, crop and normalization all change the answer."""
    rows = np.linspace(0, 1, 200)[:, None, None]
    cols = np.linspace(0, 1, 320)[None, :, None]
    pixels = np.concatenate([np.broadcast_to(rows * 230, (200, 320, 1)), np.broadcast_to(cols * 250, (200, 320, 1)),
                             np.full((200, 320, 1), 90.0)], axis=2)  # fmt: skip
    noise = np.random.default_rng(3).integers(0, 25, size=pixels.shape)
    buffer = BytesIO()
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8), "RGB").save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


@pytest.mark.slow
def test_torchserve_and_modelserve_give_the_same_top_k_and_model_list(tmp_path: Path, store: Path) -> None:
    tiny_archive(tmp_path, store)
    image = sample_image()
    (tmp_path / "modelserve").mkdir()
    with (
        running_torchserve(tmp_path / "torchserve", store, ["tiny=tiny.mar"]) as reference,
        running_server(tmp_path / "modelserve", store, ["tiny=tiny.mar"], extra_args=["--ncs"]) as server,
    ):
        print(f"TorchServe started in {reference.started_in:.1f} s ({reference.attempts} attempt(s))")
        theirs, ours = reference.predict("tiny", image), server.predict("tiny", image)
        their_list, our_list = reference.manage("GET", "/models"), server.manage("GET", "/models")
    assert theirs.status == 200, theirs.text
    assert ours.status == 200, ours.text
    assert their_list.status == 200, their_list.text
    assert our_list.status == 200, our_list.text
    assert len(reference.seen_pids) >= 3, f"launcher, JVM and a worker expected, saw {reference.seen_pids}"
    assert not reference.live_pids(), f"TorchServe processes left behind: {reference.live_pids()}"

    their_scores, our_scores = theirs.json(), ours.json()
    assert len(their_scores) == 5, their_scores  # TorchServe's top 5 of 8, best first
    assert list(our_scores) == list(their_scores), (our_scores, their_scores)
    for label, probability in their_scores.items():
        assert our_scores[label] == pytest.approx(probability, abs=1e-5), (label, our_scores, their_scores)
    assert max(their_scores.values()) < 0.9 and min(their_scores.values()) > 0.01  # a spread, not one certain class

    assert their_list.json() == {"models": [{"modelName": "tiny", "modelUrl": "tiny.mar"}]}
    assert our_list.json() == their_list.json()


def test_missing_torchserve_venv_fails_with_the_setup_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torchserve, "TS_BIN", tmp_path / "no-venv" / "bin")
    with (
        pytest.raises(pytest.fail.Exception, match=r"run scripts/setup\.sh"),
        running_torchserve(tmp_path / "ts", tmp_path, ["x=x.mar"]),
    ):
        pass  # never reached


@pytest.mark.slow
def test_torchserve_start_picks_other_ports_when_one_is_taken(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store: Path
) -> None:
    tiny_archive(tmp_path, store)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        picks = iter([[taken.getsockname()[1], *torchserve.free_ports(4)]])
        # the first pick has a port another process holds, as if it had been taken between pick and bind
        monkeypatch.setattr(torchserve, "free_ports", lambda count: next(picks, None) or free_ports(count))
        with running_torchserve(tmp_path / "torchserve", store, ["tiny=tiny.mar"]) as reference:
            assert reference.attempts == 2
            assert reference.ports["inference"] != taken.getsockname()[1]
            assert reference.predict("tiny", sample_image()).status == 200
    assert "Address already in use" in (tmp_path / "torchserve" / "torchserve.out").read_text()
    assert not reference.live_pids(), f"TorchServe processes left behind: {reference.live_pids()}"


@pytest.mark.slow
def test_torchserve_start_failure_raises_with_its_logs_and_leaves_nothing(tmp_path: Path, store: Path) -> None:
    (tmp_path / "broken.py").write_text('raise RuntimeError("this handler never loads: 7f3a")\n')
    made = subprocess.run(
        [script("torch-model-archiver"), "--model-name", "broken", "--version", "1.0", "--handler", "broken.py",
         "--export-path", str(store)],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    server = torchserve.TorchServeProcess(tmp_path / "torchserve", store, ["broken=broken.mar"])
    try:
        with pytest.raises(torchserve.TorchServeError, match="workers died") as failure:
            server.start(timeout=120)
    finally:
        server.stop()
    assert "this handler never loads: 7f3a" in str(failure.value)  # the worker's traceback, from logs/model_log.log
    assert len(server.seen_pids) >= 2 and not server.live_pids(), (server.seen_pids, server.live_pids())
