"""The ``ts`` compatibility package on its own: metrics cache, utilities, context, envelopes, text helpers, image
transforms. The package is put on ``sys.path`` here as a worker puts it (the test environment has no real ``ts``)."""

from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from PIL import Image

from modelserve.handler import Context, HandlerError, RequestInfo, load_handler
from modelserve.handler_metrics import MetricKind
from modelserve.tscompat import TS_COMPAT_DIR, expose_ts_package


@pytest.fixture(scope="module", autouse=True)
def ts_on_path() -> None:
    assert importlib.util.find_spec("ts") is None or str(TS_COMPAT_DIR) in sys.path, "a real ts is installed"
    assert expose_ts_package() is True


def _context(**yaml_config: Any) -> Context:
    context = Context("m", "1.0", "/nonexistent", {"model": {"modelName": "m"}}, 4, dict(yaml_config), 1)
    context.begin_batch([RequestInfo("r0", {"x-a": "1"}, ""), RequestInfo("r1", {}, "")])
    return context


def test_server_modules_never_import_ts() -> None:
    code = (
        "import sys, importlib.util\n"
        "import modelserve.cli, modelserve.server.lifecycle, modelserve.workers.main, modelserve.handler\n"
        "assert 'ts' not in sys.modules, 'ts was imported'\n"
        "assert importlib.util.find_spec('ts') is None, 'ts is importable in the server'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_expose_leaves_a_real_ts_alone(tmp_path: Path) -> None:
    (tmp_path / "ts").mkdir()
    (tmp_path / "ts" / "__init__.py").write_text("REAL = True\n")
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from modelserve.tscompat import TS_COMPAT_DIR, expose_ts_package\n"
        "assert expose_ts_package() is False\n"
        "assert str(TS_COMPAT_DIR) not in sys.path\n"
        "import ts\n"
        "assert ts.REAL\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr


def test_metrics_cache_api_records_samples_with_dimensions_as_labels() -> None:
    from ts.metrics.dimension import Dimension
    from ts.metrics.metric_cache_errors import MetricsCacheKeyError, MetricsCacheValueError
    from ts.metrics.metric_type_enum import MetricTypes

    metrics = _context().metrics
    metric = metrics.add_metric_to_cache("Loaded", "count", ["Color"], MetricTypes.COUNTER)
    metric.add_or_update(2, ["red"])
    assert metrics.get_metric("Loaded", MetricTypes.COUNTER) is metric
    metrics.add_counter("Calls", 1, None, [Dimension("ModelName", "m"), Dimension("Level", "Model")])
    metrics.add_time("Latency.ms", 3.5, None, "ms")
    metrics.add_size("Bytes", 4, None, "kB")
    metrics.add_percent("Ratio", 50)
    metrics.add_metric("Hist", 7, "ms", None, [Dimension("model_name", "x")], MetricTypes.HISTOGRAM)
    metrics.add_counter("ours", 2, {"color": "blue"}, "described")
    samples = [(s.kind, s.name, s.value, s.labels) for s in metrics.drain()]
    assert samples == [
        ("counter", "Loaded", 2.0, {"Color": "red"}),
        ("counter", "Calls", 1.0, {"Level": "Model"}),
        ("gauge", "Latency_ms", 3.5, {}),
        ("gauge", "Bytes", 4.0, {}),
        ("gauge", "Ratio", 50.0, {}),
        ("histogram", "Hist", 7.0, {"dimension_model_name": "x"}),
        ("counter", "ours", 2.0, {"color": "blue"}),
    ]
    with pytest.raises(MetricsCacheKeyError):
        metrics.get_metric("Loaded", MetricTypes.GAUGE)
    with pytest.raises(MetricsCacheValueError):
        metrics.add_time("T", 1, None, "hours")
    with pytest.raises(MetricsCacheValueError):
        metrics.add_counter("Down", -1, None, [])
    with pytest.raises(MetricsCacheValueError):
        metric.add_or_update(1, [])
    assert MetricTypes.GAUGE is MetricKind.GAUGE and MetricTypes("histogram") is MetricTypes.HISTOGRAM


def test_modelserve_metric_api_still_refuses_bad_names_and_reserved_labels() -> None:
    metrics = _context().metrics
    with pytest.raises(ValueError, match="invalid metric name"):
        metrics.set_gauge("bad-name", 1)
    with pytest.raises(ValueError, match="set by the server"):
        metrics.observe("ok", 1, {"model_name": "x"})


def test_metrics_yaml_declares_metrics(tmp_path: Path) -> None:
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

    path = tmp_path / "metrics.yaml"
    path.write_text("model_metrics:\n  gauge:\n    - name: Temp\n      unit: C\n      dimensions: [Room]\n")
    cache = MetricsCacheYamlImpl(path)
    cache.initialize_cache()
    cache.get_metric("Temp", MetricKind.GAUGE).add_or_update(21, ["kitchen"])
    assert [(s.name, s.labels) for s in cache.drain()] == [("Temp", {"Room": "kitchen"})]
    assert cache.cache_keys() == ["gauge:Temp"]


def test_util_label_mapping_and_class_to_label(tmp_path: Path) -> None:
    from ts.utils.util import get_yaml_config, load_label_mapping, map_class_to_label

    (tmp_path / "map.json").write_text(json.dumps({"0": ["n01", "cat"], "1": "dog"}))
    mapping = load_label_mapping(tmp_path / "map.json")
    assert mapping == {"0": "cat", "1": "dog"}
    assert load_label_mapping(tmp_path / "missing.json") is None
    (tmp_path / "old.json").write_text(json.dumps({"object_type_names": ["a", "b"]}))
    assert load_label_mapping(tmp_path / "old.json") == {"0": "a", "1": "b"}
    assert map_class_to_label([[0.25, 0.75]], mapping) == [{"cat": 0.25, "dog": 0.75}]
    assert map_class_to_label([[0.9]], mapping, [[1]]) == [{"dog": 0.9}]
    assert map_class_to_label([[0.1, 0.2]]) == [{"0": 0.1, "1": 0.2}]
    with pytest.raises(KeyError, match="no entry for class 5"):
        map_class_to_label([[0.5]], mapping, [[5]])
    (tmp_path / "c.yaml").write_text("a: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(Exception, match="could not determine a constructor"):
        get_yaml_config(tmp_path / "c.yaml")


def test_prediction_exception_carries_its_code() -> None:
    from ts.utils.util import PredictionException

    from modelserve.handler import PredictionError

    error = PredictionException("nope", 418)
    assert isinstance(error, PredictionError) and (error.message, error.error_code) == ("nope", 418)
    assert str(error) == "nope : 418"


def test_torchserve_style_context_and_request_processor() -> None:
    from ts.context import Context as TsContext
    from ts.context import RequestProcessor

    context = TsContext("m", "/dir", {"model": {"modelVersion": "2.0"}}, 1, None, "0.12.0", metrics=None)
    assert context.system_properties["model_dir"] == "/dir" and context.model_version == "2.0"
    context.request_processor = [RequestProcessor({"X-Id": "7", "Content-Type": "text/plain"})]
    context.request_ids = {0: "req-0"}
    assert context.get_request_header(0, "X-Id") == "7" and context.get_request_id(0) == "req-0"
    context.set_response_content_type(0, "application/json")
    context.set_response_header(0, "X-Out", "1")
    context.set_response_status(202, "Accepted", 0)
    assert context.get_response_headers(0) == {"X-Out": "1", "content-type": "application/json"}
    assert context.get_response_status(0) == (202, "Accepted")
    assert context.request_processor[0].get_request_properties()["content-type"] == "text/plain"


def test_timed_adds_a_time_metric_only_when_profiling() -> None:
    from ts.handler_utils.timer import timed

    class Handler:
        def __init__(self, context: Context) -> None:
            self.context = context

        @timed
        def preprocess(self, data: int) -> int:
            return data + 1

    quiet = Handler(_context())
    assert quiet.preprocess(1) == 2 and quiet.context.metrics.drain() == []
    loud = Handler(_context(handler={"profile": True}))
    assert loud.preprocess(1) == 2
    assert [s.name for s in loud.context.metrics.drain()] == ["ts_handler_preprocess"]


def test_send_intermediate_predict_response_queues_parts() -> None:
    from ts.handler_utils.utils import send_intermediate_predict_response

    context = _context()
    send_intermediate_predict_response(["a", "b"], context.request_ids, "Intermediate", 200, context)
    assert [r.parts for r in context.responses] == [["a"], ["b"]]


def test_text_utils_tokenize_and_ngrams() -> None:
    from ts.handler_utils.text_utils import get_tokenizer, ngrams_iterator

    tokenize = get_tokenizer("basic_english")
    assert tokenize('Hello, World! "Quoted" (x)<br />y; z: end.') == [
        "hello", ",", "world", "!", "quoted", "(", "x", ")", "y", "z", "end", ".",
    ]  # fmt: skip
    assert list(ngrams_iterator(["a", "b", "c"], 2)) == ["a", "b", "c", "a b", "b c"]
    with pytest.raises(ValueError, match="not available"):
        get_tokenizer("spacy")


def test_envelopes_reshape_inputs_and_outputs() -> None:
    from ts.torch_handler.request_envelope.json import JSONEnvelope
    from ts.torch_handler.request_envelope.kserve import KServeEnvelope
    from ts.torch_handler.request_envelope.kservev2 import KServev2Envelope

    seen: list[Any] = []

    def handle(data: Any, context: Any) -> Any:
        seen.append(data)
        return [len(str(item)) for item in data]

    context = _context()
    rows = [{"body": {"instances": [1, 22]}}, {"body": {"instances": [{"b64": "aGk="}]}}]
    assert JSONEnvelope(handle).handle(rows, context) == ['{"predictions": [1, 2]}', '{"predictions": [5]}']
    assert seen[-1] == [1, 22, b"hi"]
    assert KServeEnvelope(handle).handle([{"body": b'{"instances": [333]}'}], context) == [{"predictions": [3]}]
    v2 = KServev2Envelope(lambda data, ctx: [[1.5, 2.5]])
    body = {"id": "abc", "inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [1, 2]}]}
    (answer,) = v2.handle([{"body": body}], context)
    assert answer["id"] == "abc" and answer["outputs"] == [
        {"name": "x", "datatype": "FP64", "data": [1.5, 2.5], "shape": [2]}
    ]


def test_pillow_pipeline_follows_torchvision_rounding() -> None:
    import torch
    from ts.torch_handler.vision_handler import _PillowPipeline

    from modelserve.vision import ImageTransform

    pipeline = _PillowPipeline(ImageTransform(resize=4, crop=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)))
    rgb = np.arange(7 * 5 * 3, dtype=np.uint8).reshape(5, 7, 3)
    image = Image.fromarray(rgb)
    out = pipeline(image)
    assert isinstance(out, torch.Tensor) and tuple(out.shape) == (3, 3, 3)
    # shorter side 5 -> 4, longer side int(4 * 7 / 5) = 5 (truncated, not rounded); crop offset round((5-3)/2) = 1
    resized = image.resize((5, 4), Image.Resampling.BILINEAR)
    expected = (np.asarray(resized, dtype=np.float32)[0:3, 1:4] / 255.0 - 0.5) / 0.25
    assert np.allclose(out.numpy(), expected.transpose(2, 0, 1), atol=1e-6)


def test_vision_handler_turns_undecodable_images_into_bad_input() -> None:
    from ts.torch_handler.vision_handler import open_image

    from modelserve.handler import BadInputError

    with pytest.raises(BadInputError, match="not an image"):
        open_image(b"definitely not a png")
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="PNG")
    with pytest.raises(BadInputError, match="truncated or corrupt"):
        open_image(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def _write(directory: Path, name: str, source: str) -> None:
    (directory / name).write_text(source)


def test_handler_selection_follows_torchserve(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "plain.py",
        "class Helperless:\n    def initialize(self, c): pass\n    def handle(self, d, c): return d\n",
    )
    entry, instance = load_handler(tmp_path, "plain.py", None)
    assert type(instance).__name__ == "Helperless" and entry == instance.handle
    _write(
        tmp_path, "both.py", "class A:\n    def handle(self, d, c): return 'class'\n\ndef handle(d, c): return 'fn'\n"
    )
    entry, instance = load_handler(tmp_path, "both.py", None)
    assert instance is None and cast(Any, entry)([], None) == "fn"  # a module-level handle wins, as in TorchServe
    _write(tmp_path, "named.py", "def go(d, c): return 'go'\n")
    entry, _ = load_handler(tmp_path, "named:go", None)
    assert cast(Any, entry)([], None) == "go"
    _write(
        tmp_path, "two.py", "class A:\n    def handle(self, d, c): pass\nclass B:\n    def handle(self, d, c): pass\n"
    )
    with pytest.raises(HandlerError, match="several handler classes: A, B"):
        load_handler(tmp_path, "two.py", None)
    _write(tmp_path, "none.py", "class Data:\n    pass\n")
    with pytest.raises(HandlerError, match="defines no handler"):
        load_handler(tmp_path, "none.py", None)


def test_micro_batching_runs_the_steps_per_micro_batch_in_order() -> None:
    from ts.handler_utils.micro_batching import MicroBatching

    class Handler:
        def __init__(self) -> None:
            self.seen: list[list[int]] = []

        def preprocess(self, data: list[int]) -> list[int]:
            self.seen.append(list(data))
            if 13 in data:
                raise ValueError("unlucky")
            return [d * 10 for d in data]

        def inference(self, data: list[int]) -> list[int]:
            return [d + 1 for d in data]

        def postprocess(self, data: list[int]) -> list[int]:
            return data

    handler = Handler()
    batching = MicroBatching(handler, micro_batch_size=2, parallelism={"preprocess": 2, "inference": 3})
    try:
        assert batching.handle(list(range(7))) == [d * 10 + 1 for d in range(7)]
        assert sorted(handler.seen) == [[0, 1], [2, 3], [4, 5], [6]]
        with pytest.raises(ValueError, match="unlucky"):
            batching.handle([1, 13, 2])
        assert batching.handle([5]) == [51]  # nothing of the failed batch leaks into the next one
        with pytest.raises(ValueError, match="per step"):
            batching.parallelism = {"decode": 1}
    finally:
        batching.shutdown()
