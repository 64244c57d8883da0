"""TorchServe parity: handlers written against TorchServe's ``ts`` API, archived with torch-model-archiver 0.12.0,
served by modelserve and by the real TorchServe 0.12.0 in the same run, answers compared value for value."""

from __future__ import annotations

import base64
import io
import json
import math
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.support import models
from tests.support.paths import SUPPORT, script
from tests.support.server import Response, ServerProcess, call, running_server
from tests.support.torchserve import TorchServeProcess, running_torchserve

pytestmark = pytest.mark.slow

STYLE = SUPPORT / "ts_style"
LABELS = {str(i): name for i, name in enumerate(["ant", "bee", "cat", "dog", "eel", "fox"])}


@dataclass(frozen=True)
class Case:
    """One archive: its handler file (or file:function), and what else goes in."""

    name: str
    handler: str
    model: str = ""  # a key of NETWORKS
    labels: dict[str, str] | None = None
    config: str | None = None


# network source file -> its source; each gets seeded weights <stem>.pth
NETWORKS = {
    "tiny_net.py": (STYLE / "tiny_net.py").read_text(),
    "segmenter.py": models.SEGMENTER_SOURCE,
    "detector.py": models.DETECTOR_SOURCE,
}


CASES = [
    Case("prepost", "prepost_handler.py", model="tiny_net.py"),
    Case("topk", "topk_classifier.py", model="tiny_net.py", labels=LABELS),
    Case("headers", "header_handler.py"),
    Case("metrics", "metrics_handler.py"),
    Case("timed", "timed_handler.py", model="tiny_net.py", config="handler:\n  profile: true\n"),
    Case("plain", "plain_class_handler.py", config="handler:\n  greeting: hi\n"),
    Case("picky", "prediction_error_handler.py"),
    Case("batch", "batch_sum_handler.py", config="batchSize: 4\nmaxBatchDelay: 3000\nminWorkers: 1\nmaxWorkers: 1\n"),
    Case("doubler", "function_handler.py"),
    Case("shouter", "function_handler.py:shout"),  # archived as torch-model-archiver takes it: module:function
    Case("stream", "stream_handler.py"),
    # TorchServe's built-in names: TorchServe runs its ts.torch_handler module, modelserve its built-in of that name
    Case("segmenter", "image_segmenter", model="segmenter.py"),
    Case("detector", "object_detector", model="detector.py", labels={"1": "person", "2": "cat"}),
]


def _archive(case: Case, work: Path, store: Path) -> None:
    src = work / case.name
    src.mkdir()
    file_part, _, function = case.handler.partition(":")
    if file_part.endswith(".py"):
        (src / file_part).write_bytes((STYLE / file_part).read_bytes())
    handler = f"{file_part[:-3]}:{function}" if function else file_part
    args = [script("torch-model-archiver"), "--model-name", case.name, "--version", "1.0",
            "--handler", handler, "--export-path", str(store)]  # fmt: skip
    if case.model:
        weights = case.model.replace(".py", ".pth")
        (src / case.model).write_text(NETWORKS[case.model])
        (src / weights).write_bytes((work / weights).read_bytes())
        args += ["--model-file", case.model, "--serialized-file", weights]
    if case.labels is not None:
        (src / "index_to_name.json").write_text(json.dumps(case.labels))
        args += ["--extra-files", "index_to_name.json"]
    if case.config is not None:
        (src / "model-config.yaml").write_text(case.config)
        args += ["--config-file", "model-config.yaml"]
    made = subprocess.run(args, cwd=src, capture_output=True, text=True, timeout=120, check=False)
    assert made.returncode == 0, made.stderr


OURS = "made_by_modelserve"


def _archive_with_modelserve(work: Path, store: Path) -> None:
    """The other direction: modelserve-archive packs a ts-style handler; TorchServe must serve it too."""
    src = work / "prepost"
    made = subprocess.run(
        [script("modelserve-archive"), "--model-name", OURS, "--model-file", "tiny_net.py", "--serialized-file",
         "tiny_net.pth", "--handler", "prepost_handler.py", "--export-path", str(store)],
        cwd=src, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr


@dataclass
class Servers:
    modelserve: ServerProcess
    torchserve: TorchServeProcess


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    work = tmp_path_factory.mktemp("parity")
    store = work / "model_store"
    store.mkdir()
    torch.manual_seed(7)
    for file_name, source in NETWORKS.items():
        namespace: dict[str, Any] = {}
        exec(compile(source, file_name, "exec"), namespace)
        (network,) = [v for v in namespace.values() if isinstance(v, type) and issubclass(v, torch.nn.Module)
                      and v is not torch.nn.Module]  # fmt: skip
        torch.save(network().state_dict(), work / file_name.replace(".py", ".pth"))
    for case in CASES:
        _archive(case, work, store)
    _archive_with_modelserve(work, store)
    models = [f"{name}={name}.mar" for name in [*(case.name for case in CASES), OURS]]
    (work / "ms").mkdir()
    with (
        running_server(work / "ms", store, models, extra_args=["--ncs", "--disable-token-auth"]) as ours,
        running_torchserve(work / "ts", store, models) as theirs,
    ):
        yield Servers(ours, theirs)


def _pixels(seed: int) -> list[Any]:
    generator = torch.Generator().manual_seed(seed)
    pixels: list[Any] = torch.rand((3, 8, 8), generator=generator).tolist()
    return pixels


def _png(color: tuple[int, int, int], size: tuple[int, int] = (300, 260)) -> bytes:
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 7):  # some structure, so the conv layer sees edges
        for y in range(0, size[1], 5):
            image.putpixel((x, y), (255 - color[0], color[1], 255 - color[2]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def assert_same(ours: Any, theirs: Any, path: str = "$", tolerance: float = 1e-5) -> None:
    """Equal JSON values, floats within ``tolerance``."""
    where = f"{path}: ours {_short(ours)} vs TorchServe's {_short(theirs)}"
    if isinstance(theirs, float) or isinstance(ours, float):
        assert isinstance(ours, (int, float)) and isinstance(theirs, (int, float)), where
        assert math.isclose(ours, theirs, rel_tol=tolerance, abs_tol=tolerance), where
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and list(ours) == list(theirs), where
        for key in theirs:
            assert_same(ours[key], theirs[key], f"{path}.{key}", tolerance)
    elif isinstance(theirs, list):
        assert isinstance(ours, list) and len(ours) == len(theirs), where
        for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_same(a, b, f"{path}[{index}]", tolerance)
    else:
        assert ours == theirs, where


def both(
    servers: Servers, model: str, body: bytes, headers: dict[str, str] | None = None, route: str = "predictions"
) -> tuple[Response, Response]:
    ours = call("POST", f"{servers.modelserve.inference}/{route}/{model}", body, headers)
    theirs = call("POST", f"{servers.torchserve.inference}/{route}/{model}", body, headers)
    return ours, theirs


JSON = {"Content-Type": "application/json"}
TEXT = {"Content-Type": "text/plain"}


def test_base_handler_subclass_with_only_pre_and_postprocess(servers: Servers) -> None:
    body = json.dumps({"pixels": _pixels(1)}).encode()
    ours, theirs = both(servers, "prepost", body, JSON)
    assert (ours.status, theirs.status) == (200, 200), (ours.text, theirs.text)
    assert_same(ours.json(), theirs.json())
    assert len(ours.json()) == 6 and math.isclose(sum(ours.json()), 1.0, abs_tol=1e-5)


def test_an_archive_made_by_modelserve_archive_serves_in_torchserve(servers: Servers) -> None:
    body = json.dumps({"pixels": _pixels(4)}).encode()
    ours, theirs = both(servers, OURS, body, JSON)
    assert (ours.status, theirs.status) == (200, 200), (ours.text, theirs.text)
    assert_same(ours.json(), theirs.json())
    assert_same(ours.json(), both(servers, "prepost", body, JSON)[1].json())


def test_explanations_call_get_insights_with_the_target(servers: Servers) -> None:
    body = json.dumps({"pixels": _pixels(2), "target": 3}).encode()
    ours, theirs = both(servers, "prepost", body, JSON, route="explanations")
    assert (ours.status, theirs.status) == (200, 200), (ours.text, theirs.text)
    assert_same(ours.json(), theirs.json())
    predicted = call("POST", f"{servers.modelserve.inference}/predictions/prepost", body, JSON).json()
    assert ours.json() != predicted, "the explanation must not be the prediction"


@pytest.mark.parametrize("color", [(200, 30, 30), (20, 180, 90), (10, 10, 240)])
def test_image_classifier_subclass_with_topk_labels_and_custom_postprocess(
    servers: Servers, color: tuple[int, int, int]
) -> None:
    ours, theirs = both(servers, "topk", _png(color))
    assert (ours.status, theirs.status) == (200, 200), (ours.text, theirs.text)
    assert_same(ours.json(), theirs.json())
    answer = ours.json()
    assert len(answer["scores"]) == 3 and set(answer["scores"]) <= set(LABELS.values())


def test_image_classifier_reads_base64_text(servers: Servers) -> None:
    image = _png((90, 90, 10))
    ours, theirs = both(servers, "topk", base64.b64encode(image), TEXT)
    assert (ours.status, theirs.status) == (200, 200), (ours.text, theirs.text)
    assert_same(ours.json(), theirs.json())
    assert_same(ours.json(), both(servers, "topk", image)[1].json())


def test_request_headers_and_response_headers_status_and_content_type(servers: Servers) -> None:
    ours, theirs = both(servers, "headers", b"abcd", {"X-Scale": "2.5", **TEXT})
    assert (ours.status, theirs.status) == (201, 201), (ours.text, theirs.text)
    assert ours.headers["x-model"] == theirs.headers["x-model"] == "headers"
    assert ours.headers["content-type"].startswith("application/json")
    assert theirs.headers["content-type"].startswith("application/json")
    assert_same(ours.json(), theirs.json())
    assert ours.json() == {"length": 10.0, "model": "headers"}


def test_custom_metrics_answer_alike_and_appear_on_metrics(servers: Servers) -> None:
    ours, theirs = both(servers, "metrics", b"{}", JSON)
    assert (ours.status, theirs.status) == (200, 200), (ours.text, theirs.text)
    assert_same(ours.json(), theirs.json())
    samples = _scrape(servers.modelserve)
    model = {"model_name": "metrics", "model_version": "1.0"}
    assert samples[("modelserve_handler_ParityRequests_total", _labels(model, Color="red"))] >= 1
    assert samples[("modelserve_handler_ParityCalls_total", _labels(model, Kind="call"))] >= 1
    assert samples[("modelserve_handler_ParityTime", _labels(model))] == 1.5
    assert samples[("modelserve_handler_ParitySize", _labels(model))] == 2.0
    assert samples[("modelserve_handler_ParityPercent", _labels(model))] == 50.0
    assert samples[("modelserve_handler_ParityGeneric", _labels(model, Kind="generic"))] == 3.0


def _labels(base: dict[str, str], **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({**base, **more}.items()))


def _scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = call("GET", f"{server.metrics}/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_timed_steps_are_profiled_into_metrics(servers: Servers) -> None:
    body = json.dumps({"pixels": _pixels(3)}).encode()
    ours, theirs = both(servers, "timed", body, JSON)
    assert (ours.status, theirs.status) == (200, 200), (ours.text, theirs.text)
    assert_same(ours.json(), theirs.json())
    samples = _scrape(servers.modelserve)
    for step in ("preprocess", "postprocess"):
        value = samples[
            (f"modelserve_handler_ts_handler_{step}", _labels({"model_name": "timed", "model_version": "1.0"}))
        ]
        assert 0 <= value < 60_000, f"{step} took {value} ms"


def test_class_handler_without_a_base_class_and_its_yaml_config(servers: Servers) -> None:
    ours, theirs = both(servers, "plain", b"world", TEXT)
    assert (ours.status, theirs.status) == (200, 200), (ours.text, theirs.text)
    assert ours.body == theirs.body == b"hi, world"


def test_prediction_exception_answers_with_its_code_and_message(servers: Servers) -> None:
    ours, theirs = both(servers, "picky", b'{"fail": false}', JSON)
    assert (ours.status, theirs.status) == (200, 200)
    assert_same(ours.json(), theirs.json())
    ours, theirs = both(servers, "picky", b'{"fail": true}', JSON)
    assert ours.status == theirs.status == 513, (ours.text, theirs.text)
    assert ours.json()["message"] == theirs.json()["message"] == "the input asked for a failure"
    assert ours.json()["code"] == theirs.json()["code"] == 513


def _concurrent(base: str, bodies: list[bytes]) -> list[Response]:
    results: list[Response | None] = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def send(index: int) -> None:
        barrier.wait(10)
        results[index] = call("POST", f"{base}/predictions/batch", bodies[index], JSON, timeout=60)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert all(r is not None for r in results), "a request did not finish"
    return [r for r in results if r is not None]


def test_batched_requests_each_get_their_own_answer(servers: Servers) -> None:
    bodies = [json.dumps({"values": [i, i * 10, 0.5]}).encode() for i in range(4)]
    for name, base in (("modelserve", servers.modelserve.inference), ("TorchServe", servers.torchserve.inference)):
        responses = _concurrent(base, bodies)
        assert [r.status for r in responses] == [200] * 4, [r.text for r in responses]
        assert [r.json()["sum"] for r in responses] == [i * 11 + 0.5 for i in range(4)]
        assert max(r.json()["batch"] for r in responses) > 1, f"{name}: no request was batched"


def test_module_level_handle_and_named_function_entry_points(servers: Servers) -> None:
    ours, theirs = both(servers, "doubler", b"ab", TEXT)
    assert ours.body == theirs.body == b"abab", (ours.text, theirs.text)
    ours, theirs = both(servers, "shouter", b"ab", TEXT)
    assert ours.body == theirs.body == b"AB", (ours.text, theirs.text)


def test_intermediate_responses_come_before_the_final_one(servers: Servers) -> None:
    ours, theirs = both(servers, "stream", b"go", TEXT)
    assert (ours.status, theirs.status) == (200, 200), (ours.text, theirs.text)
    assert ours.body == theirs.body == b"part 0;part 1;done"


def test_builtin_image_segmenter_name_answers_like_torchserve(servers: Servers) -> None:
    ours, theirs = both(servers, "segmenter", _png((250, 250, 250), (120, 90)))
    assert (ours.status, theirs.status) == (200, 200), (ours.text[:300], theirs.text[:300])
    assert len(ours.body) > 100_000, "a 224 x 224 x 2 answer"
    assert_same(ours.json(), theirs.json())
    pixels = ours.json()
    assert len(pixels) == 224 and len(pixels[0]) == 224 and len(pixels[0][0]) == 2


def test_builtin_object_detector_name_answers_like_torchserve(servers: Servers) -> None:
    ours, theirs = both(servers, "detector", _png((40, 200, 40), (64, 48)))
    assert (ours.status, theirs.status) == (200, 200), (ours.text, theirs.text)
    assert_same(ours.json(), theirs.json())
    assert ours.json() == [{"person": [0.0, 0.0, 64.0, 48.0], "score": pytest.approx(0.9)}]


def test_describe_lists_the_same_models(servers: Servers) -> None:
    ours = call("GET", f"{servers.modelserve.management}/models?limit=100").json()  # token auth is off, as theirs
    theirs = servers.torchserve.manage("GET", "/models?limit=100").json()
    assert sorted(m["modelName"] for m in ours["models"]) == sorted(m["modelName"] for m in theirs["models"])
    assert sorted(m["modelName"] for m in ours["models"]) == sorted([*(case.name for case in CASES), OURS])
