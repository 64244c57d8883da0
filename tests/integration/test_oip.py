"""Open Inference Protocol v2 and KServe v1, driven by the official clients with their default options."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from openapi_spec_validator import validate
from tritonclient.utils import InferenceServerException

from tests.support import models
from tests.support.oip_store import pack_oip_models, write_onnx_models
from tests.support.server import ServerProcess, call, running_server


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_onnx_models(tmp_path_factory.mktemp("oip-models"))


@pytest.fixture(scope="module")
def server(onnx_files: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("oip")
    store = root / "model_store"
    store.mkdir()
    pack_oip_models(onnx_files, store)
    with running_server(root, store, ["all"], extra_args=["--ncs", "--enable-model-api"]) as running:
        yield running


def host(server: ServerProcess) -> str:
    return server.inference.removeprefix("http://")


def triton_inputs(values: dict[str, np.ndarray], binary: bool) -> list[httpclient.InferInput]:
    inputs = []
    for name, array in values.items():
        item = httpclient.InferInput(f"x_{name}", list(array.shape), name)
        item.set_data_from_numpy(array, binary_data=binary)
        inputs.append(item)
    return inputs


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_sync_every_datatype(server: ServerProcess, binary: bool) -> None:
    client = httpclient.InferenceServerClient(url=host(server))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("dtypes")
    metadata = client.get_model_metadata("dtypes")
    assert {i["name"]: i["datatype"] for i in metadata["inputs"]}["x_BYTES"] == "BYTES"
    assert {i["name"]: i["shape"] for i in metadata["inputs"]}["x_FP32"] == [-1, 3]
    values = models.sample_inputs()
    outputs = [httpclient.InferRequestedOutput(f"y_{name}", binary_data=binary) for name in values]
    result = client.infer("dtypes", triton_inputs(values, binary), outputs=outputs)
    for name, array in values.items():
        got = result.as_numpy(f"y_{name}")
        assert got is not None, name
        assert got.shape == array.shape, name
        if name == "BYTES":
            assert [v if isinstance(v, bytes) else v.encode() for v in got.reshape(-1)] == list(array.reshape(-1))
        else:
            assert got.dtype == array.dtype, name
            assert np.array_equal(got, array), name
    client.close()


def test_tritonclient_defaults_match_onnxruntime(server: ServerProcess, onnx_files: Path) -> None:
    client = httpclient.InferenceServerClient(url=host(server))
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32)
    item = httpclient.InferInput("x", [5, 3], "FP32")
    item.set_data_from_numpy(x)  # binary by default
    result = client.infer("affine", [item])  # no outputs named: all of them, as JSON
    expected = ort.InferenceSession(str(onnx_files / "affine.onnx")).run(None, {"x": x})[0]
    assert np.allclose(result.as_numpy("y"), expected, atol=1e-6)
    versioned = client.infer("affine", [item], model_version="1.0", outputs=[httpclient.InferRequestedOutput("y")])
    assert np.allclose(versioned.as_numpy("y"), expected, atol=1e-6)
    with pytest.raises(InferenceServerException, match="does not exist"):
        client.infer("affine", [item], model_version="9")
    client.close()


def test_tritonclient_aio(server: ServerProcess) -> None:
    async def scenario() -> tuple[bool, np.ndarray]:
        client = aioclient.InferenceServerClient(url=host(server))
        try:
            ready = await client.is_model_ready("affine")
            x = np.ones((2, 3), dtype=np.float32)
            item = aioclient.InferInput("x", [2, 3], "FP32")
            item.set_data_from_numpy(x)
            results = await asyncio.gather(*(client.infer("affine", [item]) for _ in range(8)))
            return ready, np.stack([r.as_numpy("y") for r in results])
        finally:
            await client.close()

    ready, outputs = asyncio.run(scenario())
    expected = models.Affine()(__import__("torch").ones(2, 3)).detach().numpy()
    assert ready and outputs.shape == (8, 2, 2)
    assert np.allclose(outputs, expected, atol=1e-5)


def test_model_config_for_perf_analyzer(server: ServerProcess) -> None:
    client = httpclient.InferenceServerClient(url=host(server))
    config = client.get_model_config("affine")
    assert config["max_batch_size"] == 4
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [3]}]
    assert config["output"] == [{"name": "y", "data_type": "TYPE_FP32", "dims": [2]}]
    assert call("GET", server.inference + "/v2/models/affine/versions/1.0/config").json()["name"] == "affine"


# kserve's generated protos and tritonclient.grpc's (tests/integration/test_grpc.py) both define the protobuf package
# "inference": one process can import only one of them, so the kserve client runs in a process of its own
KSERVE_SCENARIO = r"""
import asyncio, json, sys
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

async def scenario(base):
    v2 = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", retries=0))
    try:
        request = InferRequest(
            model_name="affine", infer_inputs=[InferInput("x", [1, 3], "FP32", data=[1.0, 2.0, 3.0])]
        )
        response = await v2.infer(base, request, model_name="affine")
        ready = await v2.is_model_ready(base, "affine")
        predictions = await v1.infer(base, {"instances": [[1.0, 2.0, 3.0], [0, 0, 0]]}, model_name="affine")
    finally:
        await v2.close()
        await v1.close()
    return {"v2": response.outputs[0].as_numpy().tolist(), "ready": ready, "v1": predictions["predictions"]}

print(json.dumps(asyncio.run(scenario(sys.argv[1]))))
"""


def test_kserve_client_v2_and_v1(server: ServerProcess) -> None:
    done = subprocess.run(
        [sys.executable, "-c", KSERVE_SCENARIO, server.inference],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    expected = models.Affine()(__import__("torch").tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])).detach().numpy()
    assert got["ready"] is True
    assert np.allclose(got["v2"], expected[:1], atol=1e-5)
    assert np.allclose(got["v1"], expected, atol=1e-5)


def test_v2_server_metadata_and_errors(server: ServerProcess) -> None:
    metadata = call("GET", server.inference + "/v2").json()
    assert metadata["name"] == "modelserve" and "binary_tensor_data" in metadata["extensions"]
    missing = call("GET", server.inference + "/v2/models/nope")
    assert missing.status == 404 and "error" in missing.json()
    bad = call("POST", server.inference + "/v2/models/affine/infer", b"{not json", {"Content-Type": "application/json"})
    assert bad.status == 400 and "JSON" in bad.json()["error"]
    wrong = json.dumps({"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}).encode()
    shape = call("POST", server.inference + "/v2/models/affine/infer", wrong)
    assert shape.status == 400 and "error" in shape.json()
    short = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2]}]}).encode()
    assert call("POST", server.inference + "/v2/models/affine/infer", short).status == 400
    unknown = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}],
                          "outputs": [{"name": "nope"}]}).encode()  # fmt: skip
    assert call("POST", server.inference + "/v2/models/affine/infer", unknown).status == 400
    v1_bad = call(
        "POST", server.inference + "/v1/models/affine:predict", b'{"rows": []}', {"Content-Type": "application/json"}
    )
    assert v1_bad.status == 400 and "instances" in v1_bad.json()["error"]


def test_repository_extension(server: ServerProcess) -> None:
    index = server.manage("POST", "/v2/repository/index").json()
    assert {e["name"]: e["state"] for e in index} == {"affine": "READY", "dtypes": "READY"}
    assert server.manage("POST", "/v2/repository/models/dtypes/unload").status == 200
    assert call("GET", server.inference + "/v2/models/dtypes/ready").status == 404
    index = {e["name"]: e["state"] for e in server.manage("POST", "/v2/repository/index").json()}
    assert index["dtypes"] == "UNAVAILABLE"
    assert server.manage("POST", "/v2/repository/models/dtypes/load").status == 200
    assert call("GET", server.inference + "/v2/models/dtypes/ready").status == 200
    missing = server.manage("POST", "/v2/repository/models/nothing/load")
    assert missing.status == 404 and "error" in missing.json()


def test_openapi_documents_include_the_protocol_routes(server: ServerProcess) -> None:
    inference = call("GET", server.inference + "/api-description").json()
    validate(inference)
    assert "/v2/models/{name}/infer" in inference["paths"] and "/v1/models/{name}:predict" in inference["paths"]
    management = server.manage("OPTIONS", "/").json()
    validate(management)
    assert "/v2/repository/index" in management["paths"]
