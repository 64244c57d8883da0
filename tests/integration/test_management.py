"""Every management flow and status code, against a real server with real workers."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from openapi_spec_validator import validate

from tests.support.server import Response, ServerProcess, call, make_archive, running_server, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("mgmt")
    store = root / "model_store"
    store.mkdir()
    make_archive(store, "echo", "echo_handler.py", config_yaml="minWorkers: 1\nmaxWorkers: 1\n")
    make_archive(store, "multi", "batch_handler.py", version="1.0", config_yaml="minWorkers: 1\n")
    make_archive(store, "multi", "batch_handler.py", version="2.0", config_yaml="minWorkers: 1\n")
    make_archive(store, "sleepy", "sleep_handler.py", config_yaml="minWorkers: 1\n")
    make_archive(store, "broken", "fail_init_handler.py", config_yaml="minWorkers: 1\n")
    make_archive(store, "fn", "function_handler.py:handle", config_yaml="minWorkers: 1\n")
    for index in range(3):
        make_archive(store, f"page{index}", "echo_handler.py", config_yaml="minWorkers: 0\n")
    with running_server(root, store, ["echo=echo.mar"], extra_args=["--enable-model-api", "--ncs"]) as running:
        yield running


def register(server: ServerProcess, query: str) -> Response:
    return server.manage("POST", f"/models?{query}", timeout=120)


def test_token_is_required_on_management(server: ServerProcess) -> None:
    missing = call("GET", server.management + "/models")
    assert missing.status == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = call("GET", server.management + "/models", headers={"Authorization": "Bearer " + "x" * 43})
    assert wrong.status == 401
    assert server.manage("GET", "/models").status == 200
    assert len(server.token) >= 43  # 32 random bytes, url-safe base64
    mode = (server.workdir / "key_file.json").stat().st_mode & 0o777
    assert mode == 0o600


def test_inference_port_needs_no_token(server: ServerProcess) -> None:
    response = server.predict("echo", b"hi")
    assert response.status == 200 and response.body == b"hi"
    assert response.headers["x-request-id"]


def test_register_sync_describe_and_predict(server: ServerProcess) -> None:
    response = register(server, "url=fn.mar&synchronous=true")
    assert response.status == 200, response.text
    assert "registered with 1 initial workers" in response.json()["status"]
    described = server.manage("GET", "/models/fn").json()
    assert described[0]["modelName"] == "fn" and described[0]["status"] == "READY"
    assert described[0]["workers"][0]["status"] == "READY" and described[0]["workers"][0]["pid"] > 0
    assert described[0]["jobQueueStatus"] == {"remainingCapacity": 100, "pendingRequests": 0}
    # a module:function handler was called once with no data to initialize
    assert server.predict("fn", b"x").json() == {"initialized": True, "model": "fn"}
    assert register(server, "url=fn.mar&synchronous=true").status == 409


def test_register_waits_for_the_workers_by_default(server: ServerProcess) -> None:
    response = register(server, "url=page0.mar&initial_workers=1")
    assert response.status == 200, response.text
    assert response.json() == {"status": 'Model "page0" Version: 1.0 registered with 1 initial workers'}
    # answered once the worker is up: it serves at once
    described = server.manage("GET", "/models/page0").json()[0]
    assert [w["status"] for w in described["workers"]] == ["READY"]
    assert server.predict("page0", b"now").body == b"now"
    assert server.manage("DELETE", "/models/page0").json() == {"status": 'Model "page0" unregistered'}


def test_register_takes_a_json_body_as_torchserve_does(server: ServerProcess) -> None:
    def post_json(body: bytes) -> Response:
        headers = {**server.auth(), "Content-Type": "application/json"}
        return call("POST", server.management + "/models", body, headers, timeout=120)

    response = post_json(json.dumps({"url": "page0.mar", "initial_workers": 1, "synchronous": True}).encode())
    assert response.status == 200, response.text
    assert response.json() == {"status": 'Model "page0" Version: 1.0 registered with 1 initial workers'}
    assert server.manage("DELETE", "/models/page0").status == 200
    for bad, text in ((b"{nope", "not valid JSON"), (b'["page0.mar"]', "object"), (b'{"url": ["a"]}', "'url'")):
        refused = post_json(bad)
        assert refused.status == 400 and text in refused.json()["message"], refused.text
    assert post_json(b'{"model_name": "x"}').json()["message"] == "Parameter url is required."


def test_register_async_returns_202_then_becomes_ready(server: ServerProcess) -> None:
    response = register(server, "url=sleepy.mar&synchronous=false")
    assert response.status == 202
    assert response.json() == {"status": "Processing worker updates..."}
    wait_for(lambda: server.manage("GET", "/models/sleepy").json()[0]["status"] == "READY", 60, "sleepy ready")
    assert server.predict("sleepy", b"0").status == 200


def test_register_with_no_worker_answers_at_once(server: ServerProcess) -> None:
    for query in ("url=page1.mar&initial_workers=0", "url=page2.mar&synchronous=false&initial_workers=-1"):
        response = register(server, query)
        assert response.status == 200, response.text
        assert response.json()["status"].endswith(
            "registered with 0 initial workers. Use scale workers API to add workers for the model."
        )
    assert server.manage("GET", "/models/page1").json()[0]["workers"] == []
    for name in ("page1", "page2"):
        assert server.manage("DELETE", f"/models/{name}").status == 200


def test_register_ignores_parameters_that_are_not_numbers_as_torchserve_does(server: ServerProcess) -> None:
    response = register(server, "url=page0.mar&initial_workers=abc&batch_size=dd&max_batch_delay=junk")
    assert response.status == 200, response.text
    described = server.manage("GET", "/models/page0").json()[0]
    assert described["minWorkers"] == 0  # the store archive's own minWorkers
    assert (described["batchSize"], described["maxBatchDelay"]) == (1, 100)
    assert server.manage("DELETE", "/models/page0").status == 200


@pytest.mark.parametrize(
    ("query", "status", "text"),
    [
        ("", 400, "url"),
        ("url=missing.mar", 404, "not found"),
        ("url=", 404, "empty url"),
        ("url=../echo.mar", 400, "file name inside the model store"),
        ("url=echo.mar&runtime=java", 400, "runtime"),
        ("url=http://example.invalid/m.mar", 403, "allowed_urls"),
    ],
)
def test_register_errors(server: ServerProcess, query: str, status: int, text: str) -> None:
    response = register(server, query)
    assert response.status == status, response.text
    body = response.json()
    assert body["code"] == status and text in body["message"]


def test_register_failing_model_is_rolled_back_with_its_error(server: ServerProcess) -> None:
    response = register(server, "url=broken.mar")
    assert response.status == 500
    message = response.json()["message"]
    assert message.startswith("Failed to start workers for model broken version: 1.0: ")
    assert "weights are corrupt" in message
    assert server.manage("GET", "/models/broken").status == 404


def test_two_versions_served_at_once_and_set_default(server: ServerProcess) -> None:
    assert register(server, "url=multi.mar&synchronous=true").status == 200
    assert register(server, "url=multi-2.0.mar&synchronous=true").status == 200
    every = server.manage("GET", "/models/multi/all").json()
    assert sorted(v["modelVersion"] for v in every) == ["1.0", "2.0"]
    assert server.manage("GET", "/models/multi/2.0").json()[0]["modelVersion"] == "2.0"
    assert server.manage("GET", "/models/multi/9.9").status == 404
    pid_of = {v["modelVersion"]: v["workers"][0]["pid"] for v in every}
    assert pid_of["1.0"] != pid_of["2.0"]
    assert server.manage("GET", "/models/multi").json()[0]["modelVersion"] == "1.0"
    for version in ("1.0", "2.0"):
        response = call("POST", f"{server.inference}/predictions/multi/{version}", b"x")
        assert response.status == 200
    assert call("POST", f"{server.inference}/predictions/multi/3.0", b"x").status == 404
    assert server.manage("PUT", "/models/multi/2.0/set-default").json() == {
        "status": 'Default version successfully updated for model "multi" to "2.0"'
    }
    assert server.manage("GET", "/models/multi").json()[0]["modelVersion"] == "2.0"
    unknown_version = server.manage("PUT", "/models/multi/7.0/set-default")
    assert unknown_version.status == 404
    assert unknown_version.json()["type"] == "ModelVersionNotFoundException"
    assert unknown_version.json()["message"] == "Model version 7.0 does not exist for model multi"
    assert server.manage("PUT", "/models/nope/1.0/set-default").json()["message"] == "Model not found: nope"
    # the default cannot go while another version remains
    refused = server.manage("DELETE", "/models/multi/2.0")
    assert refused.status == 403
    assert refused.json()["type"] == "InvalidModelVersionException"
    assert refused.json()["message"].startswith("Cannot remove default version for model multi")
    assert server.manage("DELETE", "/models/multi/1.0").status == 200
    assert server.manage("DELETE", "/models/multi").status == 200
    assert server.manage("GET", "/models/multi").status == 404
    assert server.manage("DELETE", "/models/multi").status == 404


def test_scale_sync_and_async(server: ServerProcess) -> None:
    assert server.manage("PUT", "/models/echo?min_worker=2&max_worker=2&synchronous=true").status == 200
    described = server.manage("GET", "/models/echo").json()[0]
    assert described["minWorkers"] == 2 and len(described["workers"]) == 2
    assert all(w["status"] == "READY" for w in described["workers"])
    assert server.manage("PUT", "/models/echo?min_worker=1&max_worker=1").status == 202
    wait_for(lambda: len(server.manage("GET", "/models/echo").json()[0]["workers"]) == 1, 30, "scale down")
    assert server.manage("PUT", "/models/echo?min_worker=3&max_worker=1").status == 400
    assert server.manage("PUT", "/models/echo?min_worker=-1").status == 400
    assert server.manage("PUT", "/models/echo/9.9?min_worker=1").status == 404
    assert server.manage("PUT", "/models/nope?min_worker=1").status == 404
    assert server.predict("echo", b"still here").body == b"still here"


def test_scale_defaults_are_torchserve_s(server: ServerProcess) -> None:
    assert server.manage("PUT", "/models/echo?min_worker=2&max_worker=3&synchronous=true").status == 200
    # no min_worker means one worker, no max_worker means the minimum; "synchronous" is true only as "true"
    response = server.manage("PUT", "/models/echo?synchronous=TRUE")
    assert response.status == 200
    assert response.json() == {"status": "Workers scaled to 1 for model: echo"}
    described = server.manage("GET", "/models/echo").json()[0]
    assert (described["minWorkers"], described["maxWorkers"], len(described["workers"])) == (1, 1, 1)
    assert server.manage("PUT", "/models/echo?min_worker=1&synchronous=yes").status == 202
    assert server.manage("PUT", "/models/echo?min_worker=nan&max_worker=1&synchronous=true").json() == {
        "status": "Workers scaled to 1 for model: echo"
    }
    response = server.manage("PUT", "/models/echo/1.0?min_worker=1&synchronous=true")
    assert response.json() == {"status": "Workers scaled to 1 for model: echo, version: 1.0"}
    unknown = server.manage("PUT", "/models/echo/9.9?min_worker=1")
    assert unknown.json() == {"code": 404, "type": "ModelVersionNotFoundException",
                              "message": "Model version: 9.9 does not exist for model: echo"}  # fmt: skip
    assert server.manage("PUT", "/models/echo?min_worker=2&max_worker=1").json()["message"] == (
        "max_worker cannot be less than min_worker."
    )


TORCHSERVE_DESCRIBE_KEYS = [
    "modelName", "modelVersion", "modelUrl", "runtime", "minWorkers", "maxWorkers", "batchSize", "maxBatchDelay",
    "responseTimeout", "startupTimeout", "maxRetryTimeoutInSec", "clientTimeoutInMills", "parallelType",
    "parallelLevel", "deviceType", "continuousBatching", "useJobTicket", "useVenv", "stateful", "sequenceMaxIdleMSec",
    "sequenceTimeoutMSec", "maxNumSequence", "maxSequenceJobQueueSize", "loadedAtStartup", "workers", "jobQueueStatus",
]  # fmt: skip


def test_describe_has_torchserve_s_keys_then_ours(server: ServerProcess) -> None:
    described = server.manage("GET", "/models/echo").json()[0]
    assert list(described)[: len(TORCHSERVE_DESCRIBE_KEYS)] == TORCHSERVE_DESCRIBE_KEYS
    assert {"handler", "status"} <= set(described)
    assert described["loadedAtStartup"] is True and described["deviceType"] == "cpu"
    assert (described["responseTimeout"], described["startupTimeout"], described["maxBatchDelay"]) == (120, 120, 100)
    assert described["continuousBatching"] is False and described["parallelType"] == ""
    worker = described["workers"][0]
    assert list(worker) == ["id", "startTime", "status", "memoryUsage", "pid", "gpu", "gpuUsage"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", worker["startTime"]), worker["startTime"]
    assert worker["gpu"] is False and worker["gpuUsage"] == "N/A"


def test_trailing_slashes_reach_the_same_routes(server: ServerProcess) -> None:
    assert server.manage("GET", "/models/").json() == server.manage("GET", "/models").json()
    assert server.manage("GET", "/models/echo/").json()[0]["modelName"] == "echo"
    assert server.manage("GET", "/models/echo/1.0//").json()[0]["modelVersion"] == "1.0"
    assert server.manage("GET", "/models/echo/all/").status == 200
    assert server.manage("PUT", "/models/echo/?min_worker=1&synchronous=true").status == 200
    assert register(server, "url=page0.mar").status == 200
    assert server.manage("POST", "/models/?url=page0.mar").status == 409
    assert server.manage("DELETE", "/models/page0/1.0/").json() == {"status": 'Model "page0" unregistered'}
    assert server.manage("POST", "/v2/repository/index/").status == 200
    assert server.manage("GET", "/api-description/").status == 200
    # what is not there stays a clear 404 or 405, slash or not
    missing = server.manage("GET", "/models/nope/")
    assert missing.json() == {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: nope"}
    no_route = server.manage("GET", "/nothing/")
    assert no_route.status == 404 and no_route.json()["type"] == "ResourceNotFoundException"
    wrong_method = server.manage("PATCH", "/models/")
    assert wrong_method.status == 405 and {"GET", "POST"} <= {
        m.strip() for m in wrong_method.headers["allow"].split(",")
    }


def test_scale_down_under_load_loses_no_request(server: ServerProcess) -> None:
    if server.manage("GET", "/models/sleepy").status == 404:
        assert register(server, "url=sleepy.mar&synchronous=true").status == 200
    assert server.manage("PUT", "/models/sleepy?min_worker=2&max_worker=2&synchronous=true").status == 200
    with ThreadPoolExecutor(6) as pool:
        pending = [pool.submit(server.predict, "sleepy", b"0.5") for _ in range(6)]

        def all_busy() -> bool:
            return all(w["status"] == "BUSY" for w in server.manage("GET", "/models/sleepy").json()[0]["workers"])

        wait_for(all_busy, 10, "both workers busy")
        assert server.manage("PUT", "/models/sleepy?min_worker=1&max_worker=1&synchronous=true").status == 200
        results = [future.result() for future in pending]
    assert [r.status for r in results] == [200] * 6, [r.text for r in results]
    assert len(server.manage("GET", "/models/sleepy").json()[0]["workers"]) == 1


def test_list_models_sorted_with_pagination(server: ServerProcess) -> None:
    for index in range(3):
        assert register(server, f"url=page{index}.mar&synchronous=true").status == 200
    listed = server.manage("GET", "/models").json()
    names = [m["modelName"] for m in listed["models"]]
    assert names == sorted(names) and {"echo", "page0", "page1", "page2"} <= set(names)
    first = server.manage("GET", "/models?limit=2").json()
    assert len(first["models"]) == 2 and "nextPageToken" in first
    second = server.manage("GET", f"/models?limit=2&next_page_token={first['nextPageToken']}").json()
    assert second["models"][0]["modelName"] > first["models"][-1]["modelName"]
    # bad values fall back to the defaults
    fallback = server.manage("GET", "/models?limit=abc&next_page_token=zz").json()
    assert [m["modelName"] for m in fallback["models"]] == names
    assert server.manage("GET", "/models/page0").json()[0]["modelUrl"] == "page0.mar"


def test_unregister_lets_in_flight_requests_finish(server: ServerProcess) -> None:
    if server.manage("GET", "/models/sleepy").status == 404:
        assert register(server, "url=sleepy.mar&synchronous=true").status == 200
    results: list[Response] = []
    thread = threading.Thread(target=lambda: results.append(server.predict("sleepy", b"1.0", timeout=30)))
    thread.start()
    wait_for(lambda: server.manage("GET", "/models/sleepy").json()[0]["workers"][0]["status"] == "BUSY", 10,
             "request in flight")  # fmt: skip
    assert server.manage("DELETE", "/models/sleepy").status == 200
    thread.join(30)
    assert results and results[0].status == 200, results
    assert results[0].json()["slept"] == 1.0
    assert server.predict("sleepy", b"0").status == 404


def test_unknown_routes_and_methods(server: ServerProcess) -> None:
    no_route = call("GET", server.inference + "/nothing")
    assert no_route.status == 404 and no_route.json()["type"] == "ResourceNotFoundException"
    assert call("GET", server.inference + "/predictions/echo").status == 405
    response = server.manage("PATCH", "/models")
    assert response.status == 405 and response.json()["code"] == 405


def test_every_port_describes_itself_in_openapi_3(server: ServerProcess) -> None:
    for base, headers in ((server.inference, {}), (server.management, server.auth()), (server.metrics, {})):
        for method, path in (("OPTIONS", "/"), ("GET", "/api-description")):
            document = call(method, base + path, headers=headers).json()
            validate(document)
            assert document["openapi"].startswith("3.")
    paths = call("OPTIONS", server.inference + "/").json()["paths"]
    assert "/predictions/{name}" in paths and "/ping" in paths
    assert "/models/{name}/{version}/set-default" in server.manage("OPTIONS", "/").json()["paths"]


def test_model_api_is_off_by_default(tmp_path: Path, store: Path) -> None:
    make_archive(store, "echo", "echo_handler.py", config_yaml="minWorkers: 1\n")
    with running_server(tmp_path, store, ["echo.mar"], extra_args=["--ncs"]) as server:
        response = server.manage("POST", "/models?url=echo.mar")
        assert response.status == 405 and "--enable-model-api" in response.json()["message"]
        assert server.manage("DELETE", "/models/echo").status == 405
        assert server.manage("GET", "/models").json()["models"][0]["modelName"] == "echo"


def test_token_auth_can_be_disabled(tmp_path: Path, store: Path) -> None:
    with running_server(tmp_path, store, [], extra_args=["--ncs", "--disable-token-auth"]) as server:
        assert call("GET", server.management + "/models").json() == {"models": []}
        assert not (tmp_path / "key_file.json").exists()


def test_ping_reports_health(server: ServerProcess) -> None:
    response = call("GET", server.inference + "/ping")
    assert response.status == 200 and json.loads(response.body) == {"status": "Healthy"}
