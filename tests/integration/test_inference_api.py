"""The inference routes where TorchServe users can tell: /explanations, KServe v1 :explain, the headers the frontend
sets for a handler, trailing slashes, and form-urlencoded bodies."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.server import ServerProcess, call, make_archive, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("inference")
    store = root / "model_store"
    store.mkdir()
    for version in ("1.0", "2.0"):
        make_archive(store, "explainer", "explain_handler.py", version=version, config_yaml="minWorkers: 1\n")
    make_archive(store, "echo", "echo_handler.py", config_yaml="minWorkers: 1\n")
    models = ["explainer=explainer.mar", "explainer=explainer-2.0.mar", "echo=echo.mar"]
    with running_server(root, store, models, extra_args=["--ncs"]) as running:
        yield running


def post(
    server: ServerProcess, path: str, body: bytes = b"x", headers: dict[str, str] | None = None
) -> dict[str, object]:
    response = call("POST", server.inference + path, body, headers)
    assert response.status == 200, (path, response.status, response.text)
    answer: dict[str, object] = response.json()
    return answer


def test_explanations_tell_the_handler_to_explain(server: ServerProcess) -> None:
    for path in ("/explanations/explainer", "/explanations/explainer/2.0"):
        assert post(server, path) == {"did": "explain", "explain": "True", "url_path": "", "fields": []}
    response = call("PUT", server.inference + "/explanations/explainer/1.0", b"x")
    assert response.status == 200 and response.json()["did"] == "explain"


def test_predictions_tell_it_not_to_even_when_the_client_says_so(server: ServerProcess) -> None:
    answer = post(server, "/predictions/explainer", headers={"explain": "True", "url_path": "forged"})
    assert answer == {"did": "predict", "explain": "False", "url_path": "", "fields": []}


def test_path_after_the_version_reaches_the_handler_as_url_path(server: ServerProcess) -> None:
    assert post(server, "/predictions/explainer/1.0/extra/path")["url_path"] == "extra/path"
    assert post(server, "/explanations/explainer/1.0/more/")["url_path"] == "more"


def test_explanations_of_unknown_models_and_versions_are_404(server: ServerProcess) -> None:
    missing = call("POST", server.inference + "/explanations/nope", b"x")
    assert missing.status == 404
    assert missing.json() == {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: nope"}
    version = call("POST", server.inference + "/explanations/explainer/9.9", b"x")
    assert version.status == 404 and version.json()["type"] == "ModelVersionNotFoundException"
    assert version.json()["message"] == "Model version: 9.9 does not exist for model: explainer"
    assert call("POST", server.inference + "/explanations", b"x").status == 404


def test_kserve_v1_explain_answers_explanations(server: ServerProcess) -> None:
    body = json.dumps({"instances": [[1, 2], [3, 4]]}).encode()
    headers = {"Content-Type": "application/json"}
    explained = post(server, "/v1/models/explainer:explain", body, headers)
    assert explained == {"explanations": [{"explanation": [1, 2], "explain": "True"},
                                          {"explanation": [3, 4], "explain": "True"}]}  # fmt: skip
    predicted = post(server, "/v1/models/explainer:predict", body, headers)
    assert predicted == {"predictions": [{"prediction": [1, 2], "explain": "False"},
                                         {"prediction": [3, 4], "explain": "False"}]}  # fmt: skip
    bad = call("POST", server.inference + "/v1/models/explainer:explain", b"[1]", headers)
    assert bad.status == 400 and "instances" in bad.json()["error"]


def test_trailing_slashes_reach_the_same_routes(server: ServerProcess) -> None:
    assert call("POST", server.inference + "/predictions/echo/", b"hi").body == b"hi"
    assert call("PUT", server.inference + "/predictions/echo/1.0/", b"hi").body == b"hi"
    assert post(server, "/explanations/explainer/")["did"] == "explain"
    assert post(server, "/explanations/explainer/2.0//")["did"] == "explain"
    assert call("GET", server.inference + "/ping/").json() == {"status": "Healthy"}
    assert call("GET", server.inference + "/v2/health/live/").status == 200
    assert call("GET", server.inference + "/v1/models/echo/").json()["name"] == "echo"
    body = json.dumps({"instances": [[1]]}).encode()
    assert "explanations" in post(server, "/v1/models/explainer:explain/", body, {"Content-Type": "application/json"})
    wrong_method = call("GET", server.inference + "/predictions/echo/")
    assert wrong_method.status == 405 and "POST" in wrong_method.headers["allow"]
    no_route = call("POST", server.inference + "/nothing/", b"x")
    assert no_route.status == 404 and no_route.json()["type"] == "ResourceNotFoundException"


def test_form_bodies_reach_the_handler_as_fields(server: ServerProcess) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert post(server, "/predictions/explainer", b"text=hello world&lang=en", form)["fields"] == ["lang", "text"]
    # what curl --data-binary sends for a file that is no form stays the raw body
    assert post(server, "/predictions/explainer", b"\x89PNG\r\n\x1a\n", form)["fields"] == []
    assert call("POST", server.inference + "/predictions/echo", b"just text", form).body == b"just text"
