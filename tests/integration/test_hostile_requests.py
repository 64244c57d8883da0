"""Requests that killed a worker on 090138f, sent to a real server and a real (forked) worker: each gets its 4xx
naming the problem, the worker lives (same pid), and a normal request still answers 200; a worker that does die
leaves its traceback and exit code in the server's log."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.support.server import Response, ServerProcess, call, make_archive, running_server, wait_for

CONFIG = """\
minWorkers: 1
maxWorkers: 1
outputs:
  - {name: y, datatype: FP32, shape: [-1]}
"""
JSON = {"Content-Type": "application/json"}
DEEP = b"[" * 1000 + b"]" * 1000  # depth 900 parsed on 090138f; 1000 raised RecursionError and ended the worker


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("hostile")
    store = root / "model_store"
    store.mkdir()
    weights = root / "weights.pt"  # never loaded: a torch suffix makes the server fork the workers from its template
    weights.write_bytes(b"not a checkpoint")
    for name in ("hostile", "mortal"):
        make_archive(store, name, "hostile_handler.py", config_yaml=CONFIG, serialized_file=weights)
    models = ["hostile.mar", "mortal.mar"]
    with running_server(root, store, models, extra_args=["--ncs"], config="enable_model_api=true\n") as running:
        yield running


def worker_pid(server: ServerProcess, model: str) -> int:
    workers = server.manage("GET", f"/models/{model}").json()[0]["workers"]
    assert len(workers) == 1 and workers[0]["status"] == "READY", workers
    pid = int(workers[0]["pid"])
    assert server.process is not None
    assert psutil.Process(pid).ppid() != server.process.pid, "the worker is not forked from the template"
    return pid


def v2(server: ServerProcess, document: object) -> Response:
    return call("POST", f"{server.inference}/v2/models/hostile/infer", json.dumps(document).encode(), JSON)


def tensor(**fields: object) -> dict[str, object]:
    return {"name": "x", "datatype": "FP32", "shape": [2], "data": [1.0, 2.0], **fields}


def multipart_parts(count: int, boundary: str = "XyZ") -> bytes:
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="f"\r\n\r\nx\r\n'.encode()
    return part * count + f"--{boundary}--\r\n".encode()


def test_hostile_requests_get_their_4xx_and_the_worker_lives(server: ServerProcess) -> None:
    pid = worker_pid(server, "hostile")
    base = server.inference
    cases: list[tuple[str, Response, str]] = [
        ("deep JSON to /predictions", server.predict("hostile", DEEP, JSON), "deeper than"),
        (
            "deep JSON to /v1",
            call("POST", f"{base}/v1/models/hostile:predict", b'{"instances": ' + DEEP + b"}", JSON),
            "deeper than",
        ),
        (
            "deep JSON to /v2",
            call("POST", f"{base}/v2/models/hostile/infer", b'{"inputs": ' + DEEP + b"}", JSON),
            "deeper than",
        ),
        (
            "v2 shape whose product overflows",
            v2(server, {"inputs": [tensor(shape=[4611686018427387904, 4], data=[])]}),
            "'shape'",
        ),
        ("v2 shape of 65 dimensions", v2(server, {"inputs": [tensor(shape=[1] * 65, data=[1.0])]}), "dimensions"),
        (
            "v2 output parameters not an object",
            v2(server, {"inputs": [tensor()], "outputs": [{"name": "output_0", "parameters": [1]}]}),
            "'parameters'",
        ),
        # the UTF-8 bytes of a snowman, written as latin-1 characters: http.client sends header values in latin-1
        (
            "multipart boundary not ASCII",
            server.predict(
                "hostile",
                multipart_parts(1, "\u2603"),
                {"Content-Type": "multipart/form-data; boundary=\u00e2\u0098\u0083"},
            ),
            "boundary",
        ),
    ]
    started = time.monotonic()
    many_parts = server.predict(
        "hostile", multipart_parts(20_000), {"Content-Type": "multipart/form-data; boundary=XyZ"}
    )
    many_parts_s = time.monotonic() - started
    cases.append(("multipart body of 20000 parts", many_parts, "parts"))
    for label, response, needle in cases:
        assert response.status == 400, f"{label}: {response.status} {response.text}"
        assert needle in response.text, f"{label}: {response.text}"
    assert many_parts_s < 5, f"20000 parts took {many_parts_s:.1f} s (about 12 s of worker CPU on 090138f)"
    assert worker_pid(server, "hostile") == pid, "the worker was replaced"
    assert server.predict("hostile", b'{"ok": true}', JSON).json() == {"pid": pid}


def test_v2_outputs_are_named_as_the_metadata_says(server: ServerProcess) -> None:
    metadata = call("GET", f"{server.inference}/v2/models/hostile").json()
    assert [o["name"] for o in metadata["outputs"]] == ["y"]
    answer = v2(server, {"inputs": [tensor()]})
    assert answer.status == 200, answer.text
    assert [o["name"] for o in answer.json()["outputs"]] == ["y"]  # 090138f answered output_0
    requested = v2(server, {"inputs": [tensor()], "outputs": [{"name": "y"}]})
    assert requested.status == 200, requested.text  # 090138f refused y as an unknown output
    assert requested.json()["outputs"][0]["data"] == [1.0, 2.0]


def test_nan_in_a_json_result_is_sent_as_null(server: ServerProcess) -> None:
    response = server.predict("hostile", b"nan")
    assert response.status == 200, response.text
    assert json.loads(response.body, parse_constant=pytest.fail) == {"score": None, "bounds": [None, None]}


def test_a_worker_that_dies_logs_its_traceback_and_exit_code(server: ServerProcess) -> None:
    pid = worker_pid(server, "mortal")
    response = server.predict("mortal", b"die")
    assert response.status == 500, response.text
    # 090138f logged only "exit code 1" for a forked worker: the traceback was lost to os._exit
    wait_for(lambda: "WorkerDeath: the handler ended the worker on purpose" in server.log_text(), 10,
             "the dead worker's traceback in the server log")  # fmt: skip
    assert "Traceback (most recent call last)" in server.log_text()
    wait_for(lambda: "exit code 1" in server.log_text(), 10, "the exit code in the server log")

    def replaced() -> bool:
        workers = server.manage("GET", "/models/mortal").json()[0]["workers"]
        return any(w["status"] == "READY" and w["pid"] != pid for w in workers)

    wait_for(replaced, 30, "a new worker for mortal")
    assert server.predict("mortal", b"{}", JSON).status == 200


def test_a_deeply_nested_registration_body_is_a_400(server: ServerProcess) -> None:
    headers = {**server.auth(), **JSON}
    response = call("POST", f"{server.management}/models", b'{"url": ' + DEEP + b"}", headers)
    assert response.status == 400, response.text  # 090138f: RecursionError in the server, a 500
    assert "deeper than" in response.json()["message"]
