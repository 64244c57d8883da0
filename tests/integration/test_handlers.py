"""Each built-in handler and model format end to end through a running server, with generated models."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file

from modelserve.archive.packer import PackRequest, pack_archive
from tests.support import models
from tests.support.paths import REPO
from tests.support.server import ServerProcess, call, make_archive, running_server

JSON = {"Content-Type": "application/json"}
ONE = "minWorkers: 1\nmaxWorkers: 1\n"


def pack(store: Path, name: str, handler: str, **kwargs: object) -> None:
    pack_archive(PackRequest(model_name=name, handler=handler, export_path=store, force=True, **kwargs))  # type: ignore[arg-type]


def config_file(work: Path, name: str, text: str) -> Path:
    path = work / f"{name}-config.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train and archive both README examples, as scripts/demo.sh does."""
    root = tmp_path_factory.mktemp("examples")
    store = root / "model_store"
    for script in ("examples/mnist/train.py", "examples/iris_onnx/train.py"):
        result = subprocess.run(
            [sys.executable, str(REPO / script), "--export-path", str(store), "--samples-dir", str(root)],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
    return root


@pytest.fixture(scope="module")
def server(examples: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("handlers")
    store = examples / "model_store"
    (work / "segmenter.py").write_text(models.SEGMENTER_SOURCE)
    (work / "detector.py").write_text(models.DETECTOR_SOURCE)
    (work / "index_to_name.json").write_text(json.dumps({"1": "person", "2": "cat"}))
    seg_ns: dict[str, object] = {}
    exec(compile(models.SEGMENTER_SOURCE, "segmenter.py", "exec"), seg_ns)
    det_ns: dict[str, object] = {}
    exec(compile(models.DETECTOR_SOURCE, "detector.py", "exec"), det_ns)
    seg_weights = models.save_state(seg_ns["TinySegmenter"](), work / "segmenter.pth")  # type: ignore[operator]
    det_weights = models.save_state(det_ns["TinyDetector"](), work / "detector.pth")  # type: ignore[operator]
    pack(store, "segmenter", "image_segmenter", model_file=work / "segmenter.py", serialized_file=seg_weights,
         config_file=config_file(work, "seg", ONE))  # fmt: skip
    pack(store, "detector", "object_detector", model_file=work / "detector.py", serialized_file=det_weights,
         extra_files=[work / "index_to_name.json"], config_file=config_file(work, "det", ONE))  # fmt: skip
    text_path, vocab = models.text_model(work)
    labels = work / "labels" / "index_to_name.json"
    labels.parent.mkdir()
    labels.write_text(json.dumps({"0": "negative", "1": "positive"}))
    pack(store, "sentiment", "text_classifier", serialized_file=text_path, extra_files=[vocab, labels],
         config_file=config_file(work, "text", ONE))  # fmt: skip
    pack(store, "affine_ts", "tensor", serialized_file=models.affine_torchscript(work / "affine.pt"),
         config_file=config_file(work, "ts", ONE + "batchSize: 4\nmaxBatchDelay: 50\n"))  # fmt: skip
    pack(store, "affine_onnx", "tensor", serialized_file=models.affine_onnx(work / "affine.onnx"),
         config_file=config_file(work, "onnx", ONE))  # fmt: skip
    affine_source = work / "affine_model.py"
    affine_source.write_text(
        "import torch\nfrom torch import nn\n\n\nclass Affine(nn.Module):\n    def __init__(self):\n"
        "        super().__init__()\n        self.linear = nn.Linear(3, 2)\n\n    def forward(self, x):\n"
        "        return self.linear(x)\n"
    )
    save_file(dict(models.Affine().state_dict()), str(work / "affine.safetensors"))
    pack(store, "affine_st", "tensor", model_file=affine_source, serialized_file=work / "affine.safetensors",
         config_file=config_file(work, "st", ONE))  # fmt: skip
    make_archive(store, "threads", "threads_handler.py", config_yaml=ONE)
    make_archive(store, "threads_custom", "threads_handler.py", config_yaml=ONE + "intraOpThreads: 2\n")
    with running_server(work, store, ["all"], extra_args=["--ncs"]) as running:
        yield running


def test_held_out_digits_are_classified_correctly_over_http(examples: Path, server: ServerProcess) -> None:
    response = call("PUT", f"{server.inference}/predictions/mnist", (examples / "digit.png").read_bytes())
    assert response.status == 200, response.text
    scores = response.json()
    assert next(iter(scores)) == "7", scores
    assert len(scores) == 3 and abs(sum(scores.values()) - 1.0) < 0.05


def test_image_payload_forms_give_the_same_answer(examples: Path, server: ServerProcess) -> None:
    raw = (examples / "digit.png").read_bytes()
    expected = server.predict("mnist", raw).json()
    b64 = server.predict("mnist", json.dumps({"data": base64.b64encode(raw).decode()}).encode(), JSON).json()
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="data"; filename="d.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + raw
        + f"\r\n--{boundary}--\r\n".encode()
    )
    multipart = server.predict("mnist", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}).json()
    assert b64 == expected == multipart


def test_onnx_example_answers_equal_onnxruntime(examples: Path, server: ServerProcess) -> None:
    sample = json.loads((examples / "iris.json").read_text())
    response = server.predict("iris", json.dumps(sample).encode(), JSON)
    assert response.status == 200, response.text
    served = response.json()
    with subprocess.Popen(["unzip", "-p", str(examples / "model_store" / "iris.mar"), "iris.onnx"],
                          stdout=subprocess.PIPE) as unzip:  # fmt: skip
        onnx_bytes = unzip.communicate()[0]
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    features = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    rows = np.asarray([[row[f] for f in features] for row in sample["instances"]], dtype=np.float32)
    labels, probabilities = session.run(None, {session.get_inputs()[0].name: rows})
    assert [r["label"] for r in served] == list(labels)
    for mine, theirs in zip(served, probabilities, strict=True):
        assert mine["probabilities"] == pytest.approx({str(k): float(v) for k, v in theirs.items()}, rel=1e-6)


def test_onnx_worker_never_imports_torch(server: ServerProcess) -> None:
    pid = server.manage("GET", "/models/iris").json()[0]["workers"][0]["pid"]
    maps = Path(f"/proc/{pid}/maps").read_text()
    assert "onnxruntime" in maps
    assert "libtorch" not in maps, "an ONNX worker must not load torch"


def test_segmenter_returns_class_and_probability_per_pixel(server: ServerProcess) -> None:
    response = server.predict("segmenter", models.png_bytes((6, 4), 255))
    assert response.status == 200, response.text
    pixels = np.asarray(response.json())
    assert pixels.shape == (4, 6, 2)
    assert set(pixels[..., 0].ravel()) == {2.0}
    dark = np.asarray(server.predict("segmenter", models.png_bytes((3, 3), 0)).json())
    assert set(dark[..., 0].ravel()) == {0.0}


def test_detector_returns_labelled_boxes_above_threshold(server: ServerProcess) -> None:
    response = server.predict("detector", models.png_bytes((32, 20)))
    assert response.status == 200, response.text
    detections = response.json()
    assert len(detections) == 1
    assert detections[0]["person"] == [0.0, 0.0, 32.0, 20.0]
    assert detections[0]["score"] == pytest.approx(0.9)


def test_text_classifier(server: ServerProcess) -> None:
    good = server.predict("sentiment", b"A great, good movie!").json()
    bad = server.predict("sentiment", json.dumps({"text": "awful, bad movie"}).encode(), JSON).json()
    assert set(good) == {"negative", "positive"}
    assert good["positive"] > 0.9 and bad["negative"] > 0.9


@pytest.mark.parametrize("model", ["affine_ts", "affine_onnx", "affine_st"])
def test_tensor_handler_json_and_npy(server: ServerProcess, model: str) -> None:
    expected = models.Affine()(torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0]])).detach().numpy()
    batch = server.predict(model, json.dumps([[1, 1, 1], [0, 1, 0]]).encode(), JSON)
    assert batch.status == 200, batch.text
    assert np.allclose(batch.json(), expected, atol=1e-5)
    npy = server.predict(model, models.npy_bytes(np.asarray([[1, 1, 1]], dtype=np.float32)))
    assert np.allclose(npy.json(), expected[:1], atol=1e-5)
    if model == "affine_onnx":  # the ONNX graph tells the rank: a single sample is answered as one
        single = server.predict(model, json.dumps({"inputs": {"x": [1, 1, 1]}}).encode(), JSON)
        assert np.allclose(single.json(), expected[0], atol=1e-5)


GARBAGE: list[tuple[str, bytes, dict[str, str]]] = [
    ("mnist", b"", {}),
    ("mnist", b"not an image", {}),
    ("mnist", models.png_bytes()[:40], {}),
    ("mnist", b'{"data": "***"}', JSON),
    ("segmenter", b"\x89PNG\r\n\x1a\n garbage", {}),
    ("detector", b"", {}),
    ("sentiment", b"\xff\xfe\xfa", {}),
    ("sentiment", b"", {}),
    ("iris", b"{bad json", JSON),
    ("iris", b'[1, 2]', JSON),
    ("iris", b'[["a", "b", "c", "d"]]', JSON),
    ("iris", b'{"sepal_length": 1}', JSON),
    ("affine_ts", b"[[1, 2]]", JSON),
    ("affine_onnx", b"[[1, 2, 3, 4]]", JSON),
    ("affine_onnx", b'[["x", "y", "z"]]', JSON),
    ("affine_st", b"raw bytes", {}),
    ("affine_ts", b"[[1, 2], [3]]", JSON),
]  # fmt: skip


@pytest.mark.parametrize(("model", "body", "headers"), GARBAGE)
def test_garbage_inputs_get_400_and_the_worker_survives(
    server: ServerProcess, model: str, body: bytes, headers: dict[str, str]
) -> None:
    pid = server.manage("GET", f"/models/{model}").json()[0]["workers"][0]["pid"]
    response = server.predict(model, body, headers)
    assert response.status == 400, response.text
    assert response.json()["code"] == 400 and response.json()["message"]
    assert server.manage("GET", f"/models/{model}").json()[0]["workers"][0]["pid"] == pid


def test_bad_request_in_a_batch_does_not_fail_its_neighbours(server: ServerProcess) -> None:
    from concurrent.futures import ThreadPoolExecutor

    bodies = [b"[[1, 1, 1]]", b"[[1, 2]]", b"[[0, 1, 0]]", b"nonsense"] * 2
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda b: server.predict("affine_ts", b, JSON), bodies))
    assert [r.status for r in results] == [200, 400, 200, 400] * 2


def test_thread_policy_applies_before_handler_imports(server: ServerProcess) -> None:
    auto = server.predict("threads", b"x").json()
    assert auto["torch_loaded_before"] is False
    threads = auto["intra_op_threads"]
    assert threads >= 1 and auto["omp"] == str(threads) and auto["torch_threads"] == threads
    custom = server.predict("threads_custom", b"x").json()
    assert custom["omp"] == "2" and custom["torch_threads"] == 2 and custom["intra_op_threads"] == 2


def test_thread_policy_shares_the_cores_among_all_workers(
    tmp_path: Path, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # set, it is the operator's choice and the policy steps back
    cores = len(os.sched_getaffinity(0))
    make_archive(store, "solo", "threads_handler.py", config_yaml=ONE)
    make_archive(store, "pair", "threads_handler.py", config_yaml="minWorkers: 2\nmaxWorkers: 2\n")
    with running_server(tmp_path, store, ["solo.mar"], extra_args=["--ncs", "--enable-model-api"]) as running:
        solo = running.predict("solo", b"x").json()
        assert solo["omp"] == str(cores) and solo["torch_threads"] == cores, "the only worker gets every core"
        assert running.manage("POST", "/models?url=pair.mar&synchronous=true").status == 200
        pair = running.predict("pair", b"x").json()
        shared = max(1, cores // 3)
        assert pair["omp"] == str(shared) and pair["torch_threads"] == shared, "three workers share the cores"


def test_malicious_pickle_fails_to_load_and_runs_nothing(tmp_path: Path, store: Path) -> None:
    marker = tmp_path / "pwned"
    weights = models.malicious_checkpoint(tmp_path / "evil.pth", marker)
    (tmp_path / "net.py").write_text(
        "import torch\n\n\nclass Net(torch.nn.Module):\n    def forward(self, x):\n        return x\n"
    )
    pack(store, "evil", "tensor", model_file=tmp_path / "net.py", serialized_file=weights,
         config_file=config_file(tmp_path, "evil", ONE))  # fmt: skip
    env = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}
    with running_server(tmp_path, store, ["evil.mar"], extra_args=["--ncs"], env=env) as server:
        described = server.manage("GET", "/models/evil").json()[0]
        assert described["status"] == "FAILED"
        assert "weights_only" in described["error"]
        assert server.predict("evil", b"[[1]]", JSON).status == 503
    assert not marker.exists(), "the pickle's code must never run"
