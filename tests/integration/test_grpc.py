"""gRPC: the Open Inference Protocol driven by the official tritonclient.grpc (sync, aio, streaming), TorchServe's
inference and management services driven by stubs generated from modelserve's copies of TorchServe's protos, the
repository extension's rules, limits, deadlines, and random messages that must get a clear status code."""

from __future__ import annotations

import asyncio
import json
import queue
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from google.protobuf import empty_pb2
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from modelserve.server.protos import inference_pb2, inference_pb2_grpc, management_pb2, management_pb2_grpc
from tests.support import models
from tests.support.oip_store import pack_oip_models, write_onnx_models
from tests.support.server import ServerProcess, call, make_archive, running_server, wait_for

# the generated stubs are untyped
InferenceStub: Any = inference_pb2_grpc.InferenceAPIsServiceStub
ManagementStub: Any = management_pb2_grpc.ManagementAPIsServiceStub
Empty: Any = empty_pb2.Empty
CLEAR = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_onnx_models(tmp_path_factory.mktemp("grpc-models"))


@pytest.fixture(scope="module")
def server(onnx_files: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("grpc")
    store = root / "model_store"
    store.mkdir()
    pack_oip_models(onnx_files, store)
    make_archive(store, "echo", "echo_handler.py", config_yaml="minWorkers: 1\nmaxWorkers: 1\n")
    make_archive(store, "sleepy", "sleep_handler.py", config_yaml="minWorkers: 1\nmaxWorkers: 1\n")
    make_archive(store, "multi", "batch_handler.py", version="1.0", config_yaml="minWorkers: 1\n")
    make_archive(store, "multi", "batch_handler.py", version="2.0", config_yaml="minWorkers: 1\n")
    make_archive(store, "page0", "echo_handler.py", config_yaml="minWorkers: 0\n")
    make_archive(store, "gen", "streaming_handler.py", config_yaml="minWorkers: 1\nmaxWorkers: 1\n")
    make_archive(store, "stall", "streaming_handler.py", config_yaml="minWorkers: 1\nresponseTimeout: 2\n")
    make_archive(store, "ostream", "oip_stream_handler.py",
                 config_yaml=f"minWorkers: 1\nhandler:\n  wait_for: {root / 'go'}\n")  # fmt: skip
    models_at_start = ["dtypes=dtypes.mar", "affine=affine.mar", "echo=echo.mar", "sleepy=sleepy.mar", "gen=gen.mar",
                       "ostream=ostream.mar", "stall=stall.mar"]  # fmt: skip
    with running_server(root, store, models_at_start, extra_args=["--ncs", "--enable-model-api"]) as running:
        assert running.grpc_inference and running.grpc_management, running.log_text()
        yield running


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Model API off, token auth off, small messages, two calls at once."""
    root = tmp_path_factory.mktemp("grpc-locked")
    store = root / "model_store"
    store.mkdir()
    make_archive(store, "echo", "echo_handler.py", config_yaml="minWorkers: 1\nmaxWorkers: 1\n")
    config = "max_request_size=4096\ngrpc_max_concurrent_streams=2\n"
    with running_server(
        root, store, ["echo.mar"], extra_args=["--ncs", "--disable-token-auth"], config=config
    ) as running:
        yield running


def auth(server: ServerProcess) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {server.token}")]


def code_of(call: Any) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def triton_inputs(values: dict[str, np.ndarray]) -> list[grpcclient.InferInput]:
    inputs = []
    for name, array in values.items():
        item = grpcclient.InferInput(f"x_{name}", list(array.shape), name)
        item.set_data_from_numpy(array)
        inputs.append(item)
    return inputs


def check_identity(result: Any, values: dict[str, np.ndarray]) -> None:
    for name, array in values.items():
        got = result.as_numpy(f"y_{name}")
        assert got is not None and got.shape == array.shape, name
        if name == "BYTES":
            assert list(got.reshape(-1)) == list(array.reshape(-1))
        else:
            assert got.dtype == array.dtype and np.array_equal(got, array), name


def test_tritonclient_grpc_sync_every_datatype(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(url=server.grpc_inference)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("dtypes") and client.is_model_ready("dtypes", "1.0")
        metadata = client.get_server_metadata()
        assert metadata.name == "modelserve" and "model_repository" in metadata.extensions
        model = client.get_model_metadata("dtypes", as_json=True)
        assert {i["name"]: i["datatype"] for i in model["inputs"]}["x_BYTES"] == "BYTES"
        assert {i["name"]: i["shape"] for i in model["inputs"]}["x_FP32"] == ["-1", "3"]
        values = models.sample_inputs()
        outputs = [grpcclient.InferRequestedOutput(f"y_{name}") for name in values]
        result = client.infer("dtypes", triton_inputs(values), outputs=outputs, request_id="r-1")
        check_identity(result, values)
        assert result.get_response().id == "r-1"
        check_identity(client.infer("dtypes", triton_inputs(values)), values)  # no outputs named: all of them
        with pytest.raises(InferenceServerException, match="does not exist") as caught:
            client.infer("dtypes", triton_inputs(values), model_version="9")
        assert caught.value.status() == "StatusCode.NOT_FOUND"
    finally:
        client.close()


def test_answers_equal_the_model_run_directly(server: ServerProcess, onnx_files: Path) -> None:
    client = grpcclient.InferenceServerClient(url=server.grpc_inference)
    try:
        x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
        item = grpcclient.InferInput("x", [5, 3], "FP32")
        item.set_data_from_numpy(x)
        expected = ort.InferenceSession(str(onnx_files / "affine.onnx")).run(None, {"x": x})[0]
        assert np.allclose(client.infer("affine", [item]).as_numpy("y"), expected, atol=1e-6)
        bad = grpcclient.InferInput("x", [1, 2], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 2), np.float32))
        with pytest.raises(InferenceServerException) as caught:
            client.infer("affine", [bad])
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT" and "shape" in str(caught.value)
    finally:
        client.close()


def test_typed_contents_as_a_hand_made_request(server: ServerProcess, onnx_files: Path) -> None:
    """tritonclient always sends raw_input_contents; other OIP clients send typed contents."""
    x = [[1.5, -2.0, 3.25], [0.0, 1.0, 2.0]]
    with grpc.insecure_channel(server.grpc_inference) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="affine", id="typed")
        tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 3])
        tensor.contents.fp32_contents.extend(v for row in x for v in row)
        response = stub.ModelInfer(request, timeout=30)
    assert response.id == "typed" and [o.name for o in response.outputs] == ["y"]
    assert list(response.outputs[0].shape) == [2, 2] and response.outputs[0].datatype == "FP32"
    got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, 2)
    expected = ort.InferenceSession(str(onnx_files / "affine.onnx")).run(None, {"x": np.asarray(x, np.float32)})[0]
    assert np.allclose(got, expected, atol=1e-6)


def test_tritonclient_grpc_aio(server: ServerProcess) -> None:
    async def scenario() -> tuple[bool, np.ndarray, dict[str, np.ndarray]]:
        client = aioclient.InferenceServerClient(url=server.grpc_inference)
        try:
            ready = await client.is_model_ready("affine")
            item = aioclient.InferInput("x", [2, 3], "FP32")
            item.set_data_from_numpy(np.ones((2, 3), dtype=np.float32))
            results = await asyncio.gather(*(client.infer("affine", [item]) for _ in range(8)))

            async def requests() -> Any:
                for index in range(4):
                    yield {"model_name": "affine", "inputs": [item], "request_id": f"a{index}"}

            streamed = {}
            async for result, error in client.stream_infer(requests()):
                assert error is None, (error.message(), error.status()) if error is not None else None
                streamed[result.get_response().id] = result.as_numpy("y")
            return ready, np.stack([r.as_numpy("y") for r in results]), streamed
        finally:
            await client.close()

    ready, outputs, streamed = asyncio.run(scenario())
    expected = models.Affine()(__import__("torch").ones(2, 3)).detach().numpy()
    assert ready and outputs.shape == (8, 2, 2)
    assert np.allclose(outputs, expected, atol=1e-5)
    assert sorted(streamed) == ["a0", "a1", "a2", "a3"]
    assert all(np.allclose(y, expected, atol=1e-5) for y in streamed.values())


def test_tritonclient_grpc_streaming(server: ServerProcess) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(url=server.grpc_inference)
    values = models.sample_inputs(rows=1)
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for index in range(5):
            client.async_stream_infer("dtypes", triton_inputs(values), request_id=f"s{index}")
        client.async_stream_infer("nothing", triton_inputs(values), request_id="lost")
        client.async_stream_infer("dtypes", triton_inputs(values), request_id="last", enable_empty_final_response=True)
        got: dict[str, Any] = {}
        errors: list[str] = []
        finals: list[Any] = []
        deadline = time.monotonic() + 60
        while len(got) + len(errors) + len(finals) < 8:
            result, error = answers.get(timeout=max(deadline - time.monotonic(), 0.1))
            if error is not None:
                errors.append(str(error))
                continue
            response = result.get_response()
            if not response.outputs:
                finals.append(response)
                continue
            got[response.id] = result
        assert sorted(got) == ["last", "s0", "s1", "s2", "s3", "s4"]
        for result in got.values():
            check_identity(result, values)
        assert len(errors) == 1 and "nothing" in errors[0]
        assert len(finals) == 1 and finals[0].id == "last"
        assert finals[0].parameters["triton_final_response"].bool_param is True
    finally:
        client.stop_stream()
        client.close()


def test_model_stream_infer_relays_a_streamed_answer_piece_by_piece(server: ServerProcess) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = grpcclient.InferenceServerClient(url=server.grpc_inference)
    count = grpcclient.InferInput("n", [1], "INT32")
    count.set_data_from_numpy(np.array([4], dtype=np.int32))
    gate = server.store.parent / "go"

    def next_answer() -> Any:
        result, error = answers.get(timeout=30)
        assert error is None, (error.message(), error.status()) if error is not None else None
        return result

    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        client.async_stream_infer("ostream", [count], request_id="pieces", enable_empty_final_response=True)
        first = next_answer()  # it arrives while the handler waits for the gate: a piece, not the whole answer
        assert first.get_response().id == "pieces" and first.as_numpy("y").tolist() == [0]
        assert first.get_response().parameters["triton_final_response"].bool_param is False
        assert answers.empty()
        gate.write_text("go")
        rest = [next_answer() for _ in range(4)]
        assert [r.as_numpy("y").tolist() for r in rest[:3]] == [[1], [2], [3]]
        final = rest[3].get_response()
        assert not final.outputs and final.id == "pieces"
        assert final.parameters["triton_final_response"].bool_param is True
    finally:
        client.stop_stream()
        client.close()
    # over the unary call a streamed answer is refused with a clear message
    unary_client = grpcclient.InferenceServerClient(url=server.grpc_inference)
    with unary_client, pytest.raises(InferenceServerException, match="use ModelStreamInfer"):
        unary_client.infer("ostream", [count])


def test_repository_extension_with_the_token(server: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(url=server.grpc_inference)
    headers = {"authorization": f"Bearer {server.token}"}
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.get_model_repository_index()
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
        with pytest.raises(InferenceServerException):
            client.unload_model("dtypes", headers={"authorization": "Bearer wrong"})
        index = {
            m["name"]: m["state"] for m in client.get_model_repository_index(headers=headers, as_json=True)["models"]
        }
        assert index["dtypes"] == "READY" and index["page0"] == "UNAVAILABLE"
        client.unload_model("dtypes", headers=headers)
        with pytest.raises(InferenceServerException) as caught:
            client.is_model_ready("dtypes")
        assert caught.value.status() == "StatusCode.NOT_FOUND"
        client.load_model("dtypes", headers=headers)
        assert client.is_model_ready("dtypes")
        with pytest.raises(InferenceServerException) as caught:
            client.load_model("nothing", headers=headers)
        assert caught.value.status() == "StatusCode.NOT_FOUND"
    finally:
        client.close()


def test_repository_extension_model_api_off(locked: ServerProcess) -> None:
    client = grpcclient.InferenceServerClient(url=locked.grpc_inference)
    try:
        assert [m["name"] for m in client.get_model_repository_index(as_json=True)["models"]] == ["echo"]
        for action in (client.unload_model, client.load_model):
            with pytest.raises(InferenceServerException, match="model API is disabled") as caught:
                action("echo")
            assert caught.value.status() == "StatusCode.PERMISSION_DENIED"
    finally:
        client.close()


def test_torchserve_ping_predictions_and_stream(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_inference) as channel:
        stub = InferenceStub(channel)
        assert json.loads(stub.Ping(Empty(), timeout=10).health) == {"status": "Healthy"}
        request = inference_pb2.PredictionsRequest(model_name="echo", input={"data": b"\x00hello\xff"})
        assert stub.Predictions(request, timeout=30).prediction == b"\x00hello\xff"
        versioned = inference_pb2.PredictionsRequest(model_name="echo", model_version="1.0", input={"data": b"v"})
        assert stub.Predictions(versioned, timeout=30).prediction == b"v"
        streamed = list(stub.StreamPredictions(request, timeout=30))
        assert [r.prediction for r in streamed] == [b"\x00hello\xff"]
        missing = inference_pb2.PredictionsRequest(model_name="nothing", input={"data": b"x"})
        assert code_of(lambda: stub.Predictions(missing, timeout=10)) == grpc.StatusCode.NOT_FOUND
        nameless = inference_pb2.PredictionsRequest(input={"data": b"x"})
        assert code_of(lambda: stub.Predictions(nameless, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
        empty = inference_pb2.PredictionsRequest(model_name="echo")
        assert code_of(lambda: stub.Predictions(empty, timeout=10)) == grpc.StatusCode.INVALID_ARGUMENT
        pair = iter([request, missing, request])
        answers = list(stub.StreamPredictions2(pair, timeout=30))
        assert [a.prediction for a in answers] == [b"\x00hello\xff", b"", b"\x00hello\xff"]
        assert answers[1].status.code == grpc.StatusCode.NOT_FOUND.value[0]


def test_stream_predictions_relays_a_streamed_answer_piece_by_piece(server: ServerProcess, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    body = json.dumps({"mode": "count", "n": 3, "wait_for": str(gate)}).encode()
    with grpc.insecure_channel(server.grpc_inference) as channel:
        stub = InferenceStub(channel)
        stream = stub.StreamPredictions(
            inference_pb2.PredictionsRequest(model_name="gen", input={"data": body}), timeout=60
        )
        assert next(stream).prediction == b"piece 0\n"  # the first piece arrives while the handler still waits
        gate.write_text("go")
        assert [r.prediction for r in stream] == [b"piece 1\n", b"piece 2\n"]
        joined = stub.Predictions(inference_pb2.PredictionsRequest(model_name="gen", input={"data": body}), timeout=60)
        assert joined.prediction == b"piece 0\npiece 1\npiece 2\n"
        failing = inference_pb2.PredictionsRequest(model_name="gen", input={"data": b'{"mode": "fail", "after": 2}'})
        pieces: list[bytes] = []
        with pytest.raises(grpc.RpcError) as caught:
            pieces.extend(r.prediction for r in stub.StreamPredictions(failing, timeout=60))
        assert pieces == [b"p0;", b"p1;"] and "broke mid-stream" in str(caught.value.details())


def test_a_stream_reader_that_stops_reading_frees_the_worker(server: ServerProcess, tmp_path: Path) -> None:
    count = tmp_path / "yielded"
    total = 5000
    body = json.dumps({"mode": "big", "n": total, "size": 65536, "count_to": str(count)}).encode()
    plain = inference_pb2.PredictionsRequest(model_name="stall", input={"data": b'{"mode": "plain"}'})
    with grpc.insecure_channel(server.grpc_inference) as channel:
        stub = InferenceStub(channel)
        stalled = stub.StreamPredictions(inference_pb2.PredictionsRequest(model_name="stall", input={"data": body}))
        assert len(next(stalled).prediction) == 65536  # then read no more, and do not leave
        # responseTimeout is 2 s: the stalled stream is cancelled, and the model's one worker answers again
        answer = stub.Predictions(plain, timeout=30)
        assert "pid" in json.loads(answer.prediction)
        yielded = int(count.read_text())
        assert yielded < total // 5, f"the generator ran {yielded} pieces ahead of a reader that took one"
        with pytest.raises(grpc.RpcError) as caught:
            for _ in stalled:
                pass
        assert caught.value.code() == grpc.StatusCode.CANCELLED


def test_a_call_past_its_deadline_is_cancelled(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_inference) as channel:
        stub = InferenceStub(channel)
        request = inference_pb2.PredictionsRequest(model_name="sleepy", input={"data": b"2"})
        started = time.monotonic()
        assert code_of(lambda: stub.Predictions(request, timeout=0.5)) == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 1.5
        wait_for(lambda: gone(server, "sleepy") == 1, 10, "the abandoned call counted as the client's (499)")
        fast = inference_pb2.PredictionsRequest(model_name="sleepy", input={"data": b"0"})
        assert json.loads(stub.Predictions(fast, timeout=30).prediction)["slept"] == 0


def gone(server: ServerProcess, model: str) -> float:
    series = f'modelserve_requests_total{{model_name="{model}",model_version="1.0",status="499"}} '
    text = call("GET", server.metrics + "/metrics").text
    return float(text.split(series)[1].split()[0]) if series in text else 0.0


def management(server: ServerProcess) -> tuple[grpc.Channel, Any]:
    channel = grpc.insecure_channel(server.grpc_management)
    return channel, ManagementStub(channel)


def test_torchserve_management_flows(server: ServerProcess) -> None:
    channel, stub = management(server)
    meta = auth(server)
    m = management_pb2
    try:
        assert code_of(lambda: stub.ListModels(m.ListModelsRequest(), timeout=10)) == grpc.StatusCode.UNAUTHENTICATED
        bad_token = [("authorization", "Bearer nope")]
        assert code_of(lambda: stub.ListModels(m.ListModelsRequest(), metadata=bad_token, timeout=10)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
        listed = json.loads(stub.ListModels(m.ListModelsRequest(), metadata=meta, timeout=10).msg)
        assert {"affine", "dtypes", "echo", "sleepy"} <= {e["modelName"] for e in listed["models"]}
        page = json.loads(stub.ListModels(m.ListModelsRequest(limit=1), metadata=meta, timeout=10).msg)
        assert len(page["models"]) == 1 and page["nextPageToken"] == "1"

        def register(**fields: Any) -> str:
            return str(stub.RegisterModel(m.RegisterModelRequest(**fields), metadata=meta, timeout=120).msg)

        assert (
            register(url="multi.mar", synchronous=True)
            == 'Model "multi" Version: 1.0 registered with 1 initial workers'
        )
        assert register(url="multi-2.0.mar", synchronous=True).endswith("registered with 1 initial workers")
        for fields, code in (
            ({}, grpc.StatusCode.INVALID_ARGUMENT),
            ({"url": "missing.mar"}, grpc.StatusCode.NOT_FOUND),
            ({"url": "../echo.mar"}, grpc.StatusCode.INVALID_ARGUMENT),
            ({"url": "multi.mar"}, grpc.StatusCode.ALREADY_EXISTS),
            ({"url": "echo.mar", "s3_sse_kms": True}, grpc.StatusCode.INVALID_ARGUMENT),
        ):
            assert code_of(lambda fields=fields: register(**fields)) == code, fields
        try:
            register()
        except grpc.RpcError as exc:
            assert exc.details() == "Parameter url is required."
        every = json.loads(
            stub.DescribeModel(
                m.DescribeModelRequest(model_name="multi", model_version="all"), metadata=meta, timeout=10
            ).msg
        )
        assert sorted(v["modelVersion"] for v in every) == ["1.0", "2.0"]
        described = json.loads(stub.DescribeModel(m.DescribeModelRequest(model_name="multi"), metadata=meta).msg)
        assert described[0]["modelVersion"] == "1.0" and described[0]["workers"][0]["status"] == "READY"
        unknown = m.DescribeModelRequest(model_name="multi", model_version="9.9")
        assert code_of(lambda: stub.DescribeModel(unknown, metadata=meta, timeout=10)) == grpc.StatusCode.NOT_FOUND

        scaled = stub.ScaleWorker(
            m.ScaleWorkerRequest(model_name="multi", model_version="2.0", min_worker=2, max_worker=2, synchronous=True),
            metadata=meta,
            timeout=120,
        )
        assert scaled.msg == "Workers scaled to 2 for model: multi, version: 2.0"
        assert stub.ScaleWorker(m.ScaleWorkerRequest(model_name="multi"), metadata=meta).msg == (
            "Processing worker updates..."
        )
        bad_scale = m.ScaleWorkerRequest(model_name="multi", min_worker=3, max_worker=1)
        assert code_of(lambda: stub.ScaleWorker(bad_scale, metadata=meta)) == grpc.StatusCode.INVALID_ARGUMENT
        assert code_of(lambda: stub.ScaleWorker(m.ScaleWorkerRequest(model_name="nope"), metadata=meta)) == (
            grpc.StatusCode.NOT_FOUND
        )

        default = stub.SetDefault(m.SetDefaultRequest(model_name="multi", model_version="2.0"), metadata=meta)
        assert default.msg == 'Default version successfully updated for model "multi" to "2.0"'
        no_version = m.SetDefaultRequest(model_name="multi", model_version="7.0")
        assert code_of(lambda: stub.SetDefault(no_version, metadata=meta)) == grpc.StatusCode.NOT_FOUND
        in_use = m.UnregisterModelRequest(model_name="multi", model_version="2.0")
        assert code_of(lambda: stub.UnregisterModel(in_use, metadata=meta)) == grpc.StatusCode.PERMISSION_DENIED
        gone = stub.UnregisterModel(m.UnregisterModelRequest(model_name="multi", model_version="1.0"), metadata=meta)
        assert gone.msg == 'Model "multi" unregistered'
        assert stub.UnregisterModel(m.UnregisterModelRequest(model_name="multi"), metadata=meta).msg == (
            'Model "multi" unregistered'
        )
        nameless = m.UnregisterModelRequest()
        assert code_of(lambda: stub.UnregisterModel(nameless, metadata=meta)) == grpc.StatusCode.INVALID_ARGUMENT
        assert code_of(lambda: stub.UnregisterModel(m.UnregisterModelRequest(model_name="multi"), metadata=meta)) == (
            grpc.StatusCode.NOT_FOUND
        )
        # TorchServe's gRPC default: not waiting for the workers
        assert register(url="page0.mar", initial_workers=1) == "Processing worker updates..."
        wait_for(
            lambda: (
                json.loads(stub.DescribeModel(m.DescribeModelRequest(model_name="page0"), metadata=meta).msg)[0][
                    "status"
                ]
                == "READY"
            ),
            60,
            "page0",
        )
        assert stub.UnregisterModel(m.UnregisterModelRequest(model_name="page0"), metadata=meta).msg
    finally:
        channel.close()


def test_model_api_off_and_limits(locked: ServerProcess) -> None:
    channel, stub = management(locked)
    m = management_pb2
    try:
        # token auth is off: no metadata needed; the model API is off: no registration
        assert json.loads(stub.ListModels(m.ListModelsRequest(), timeout=10).msg)["models"][0]["modelName"] == "echo"
        refused = m.RegisterModelRequest(url="echo.mar")
        assert code_of(lambda: stub.RegisterModel(refused, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
        unregister = m.UnregisterModelRequest(model_name="echo")
        assert code_of(lambda: stub.UnregisterModel(unregister, timeout=10)) == grpc.StatusCode.PERMISSION_DENIED
    finally:
        channel.close()
    with grpc.insecure_channel(locked.grpc_inference) as inference:
        ts = InferenceStub(inference)
        small = inference_pb2.PredictionsRequest(model_name="echo", input={"data": b"x" * 1000})
        assert ts.Predictions(small, timeout=30).prediction == b"x" * 1000
        large = inference_pb2.PredictionsRequest(model_name="echo", input={"data": b"x" * 5000})
        assert code_of(lambda: ts.Predictions(large, timeout=30)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        # two calls at once at most: two open streams hold both, a third call is refused
        hold: list[queue.Queue[Any]] = [queue.Queue(), queue.Queue()]

        def waiting(q: queue.Queue[Any]) -> Iterator[Any]:
            while (item := q.get()) is not None:
                yield item

        streams = [ts.StreamPredictions2(waiting(q), timeout=60) for q in hold]
        for q, stream in zip(hold, streams, strict=True):
            q.put(small)
            assert next(stream).prediction == b"x" * 1000
        assert code_of(lambda: ts.Predictions(small, timeout=10)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        for q, stream in zip(hold, streams, strict=True):
            q.put(None)
            assert list(stream) == []
        wait_for(lambda: code_of(lambda: ts.Predictions(small, timeout=10)) == grpc.StatusCode.OK, 10, "calls free")


def _random_message(rng: random.Random) -> bytes:
    return rng.randbytes(rng.randrange(0, 200))


def _random_infer(rng: random.Random) -> bytes:
    request = service_pb2.ModelInferRequest(
        model_name=rng.choice(["affine", "dtypes", "", "nope", "\u00e9"]),
        model_version=rng.choice(["", "1.0", "x"]),
        id=str(rng.random()),
    )
    for _ in range(rng.randrange(0, 3)):
        tensor = request.inputs.add(
            name=rng.choice(["x", "x_FP32", "x_BYTES", "", "zz"]),
            datatype=rng.choice(["FP32", "INT8", "BYTES", "FP16", "BOOL", "NOPE", ""]),
            shape=[rng.randrange(-3, 5) for _ in range(rng.randrange(0, 4))],
        )
        if rng.random() < 0.5:
            tensor.contents.fp32_contents.extend(rng.random() for _ in range(rng.randrange(0, 8)))
            tensor.contents.int_contents.extend(rng.randrange(-500, 500) for _ in range(rng.randrange(0, 4)))
        tensor.parameters[rng.choice(["binary_data_size", "a"])].int64_param = rng.randrange(-10, 100)
    if request.inputs and rng.random() < 0.5:
        for tensor in request.inputs:
            tensor.ClearField("contents")
            request.raw_input_contents.append(rng.randbytes(rng.randrange(0, 40)))
    if rng.random() < 0.3:
        request.outputs.add(name=rng.choice(["y", "nope"]))
    if rng.random() < 0.3:
        request.parameters["binary_data_output"].string_param = "x"
    return bytes(request.SerializeToString())


def _random_prediction(rng: random.Random) -> bytes:
    fields = {
        rng.choice(["data", "body", "x\u00e9", 'q"', ""]): rng.randbytes(rng.randrange(0, 30))
        for _ in range(rng.randrange(0, 3))
    }
    request = inference_pb2.PredictionsRequest(
        model_name=rng.choice(["echo", "", "nope"]), input=fields, model_version=rng.choice(["", "1.0", "9"])
    )
    return bytes(request.SerializeToString())


def _random_management(rng: random.Random) -> bytes:
    name = rng.choice(["echo", "", "nope", "../x", "a" * 300])
    kind = rng.choice(
        [management_pb2.ScaleWorkerRequest, management_pb2.DescribeModelRequest, management_pb2.SetDefaultRequest]
    )
    message = kind(model_name=name, model_version=rng.choice(["", "1.0", "all", "9"]))
    if isinstance(message, management_pb2.ScaleWorkerRequest):
        message.min_worker = rng.randrange(-5, 3)
        message.max_worker = rng.randrange(-5, 3)
    return bytes(message.SerializeToString())


INFERENCE_UNARY = [
    "/inference.GRPCInferenceService/" + m
    for m in (
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "RepositoryIndex",
        "RepositoryModelUnload",
    )
] + ["/org.pytorch.serve.grpc.inference.InferenceAPIsService/" + m for m in ("Ping", "Predictions")]
MANAGEMENT_UNARY = [
    "/org.pytorch.serve.grpc.management.ManagementAPIsService/" + m
    for m in ("DescribeModel", "ListModels", "ScaleWorker", "SetDefault", "RegisterModel")
]


def test_random_messages_get_clear_codes_and_the_server_stays_up(server: ServerProcess) -> None:
    rng = random.Random(16)
    seen: dict[str, set[grpc.StatusCode]] = {}
    meta = auth(server)
    with (
        grpc.insecure_channel(server.grpc_inference) as inference,
        grpc.insecure_channel(server.grpc_management) as manage,
    ):
        for _ in range(300):
            channel, method = rng.choice(
                [(inference, m) for m in INFERENCE_UNARY] + [(manage, m) for m in MANAGEMENT_UNARY]
            )
            maker = rng.choice([_random_message, _random_infer, _random_prediction, _random_management])
            payload = maker(rng)
            call = channel.unary_unary(method)  # identity serializers: the bytes go as they are
            code = code_of(lambda call=call, payload=payload: call(payload, metadata=meta, timeout=30))
            seen.setdefault(method, set()).add(code)
            assert code in CLEAR, (method, code, payload)
        for method in (
            "/inference.GRPCInferenceService/ModelStreamInfer",
            "/org.pytorch.serve.grpc.inference.InferenceAPIsService/StreamPredictions2",
        ):
            stream = inference.stream_stream(method)
            payloads = [rng.choice([_random_message, _random_infer, _random_prediction])(rng) for _ in range(30)]
            try:
                for _ in stream(iter(payloads), timeout=60):
                    pass
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
            assert code in CLEAR, (method, code)
        stream_one = inference.unary_stream("/org.pytorch.serve.grpc.inference.InferenceAPIsService/StreamPredictions")
        for _ in range(20):
            payload = rng.choice([_random_message, _random_prediction])(rng)
            assert code_of(lambda payload=payload: list(stream_one(payload, timeout=30))) in CLEAR
    client = grpcclient.InferenceServerClient(url=server.grpc_inference)
    try:
        assert client.is_server_live() and client.is_model_ready("affine")
    finally:
        client.close()
    assert "unhandled error" not in server.log_text()
    assert len(seen) >= 10
