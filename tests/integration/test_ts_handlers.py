"""Handlers written against TorchServe's ``ts`` API in real workers: what they answer, and that a ``ts`` package the
model brings wins over modelserve's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelserve.archive.packer import PackRequest, pack_archive
from tests.support.paths import SUPPORT
from tests.support.server import ServerProcess, make_archive, running_server

STYLE = "ts_style/"
JSON = {"Content-Type": "application/json"}

OWN_TS_HANDLER = """
import ts


def handle(data, context):
    return [ts.WHO for _ in data or []]
"""

ERRORS_HANDLER = """
from ts.utils.util import PredictionException


class Errors:
    def initialize(self, context):
        pass

    def handle(self, data, context):
        code = int(data[0]["body"]["code"])
        if code == 0:
            raise KeyError("missing")
        raise PredictionException(f"code {code}", code)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("ts-handlers")
    store = work / "model_store"
    store.mkdir()
    own = work / "own_ts_handler.py"
    own.write_text(OWN_TS_HANDLER)
    errors = work / "errors_handler.py"
    errors.write_text(ERRORS_HANDLER)
    (work / "bundle" / "ts").mkdir(parents=True)
    (work / "bundle" / "ts" / "__init__.py").write_text('WHO = "the model\'s own ts"\n')
    # a directory's content goes to the archive's root: ts/__init__.py
    pack_archive(PackRequest(model_name="own", handler=str(own), extra_files=[work / "bundle"], export_path=store))
    make_archive(store, "errors", str(errors))
    make_archive(store, "stream", STYLE + "stream_handler.py")
    make_archive(store, "plain", STYLE + "plain_class_handler.py", config_yaml="handler:\n  greeting: hey\n")
    models = ["own=own.mar", "errors=errors.mar", "stream=stream.mar", "plain=plain.mar"]
    with running_server(work, store, models, extra_args=["--ncs"]) as running:
        yield running


def test_a_ts_package_in_the_archive_wins_over_the_compatibility_package(server: ServerProcess) -> None:
    response = server.predict("own", b"x")
    assert response.status == 200, response.text
    assert response.text == "the model's own ts"


@pytest.mark.parametrize("code", [400, 404, 422, 503, 507])
def test_prediction_exception_sets_the_status_and_the_message(server: ServerProcess, code: int) -> None:
    response = server.predict("errors", json.dumps({"code": code}).encode(), JSON)
    assert response.status == code, response.text
    assert response.json()["message"] == f"code {code}"
    assert server.predict("plain", b"again").status == 200  # the worker lives on


@pytest.mark.parametrize("code", [200, 302, 999, -1])
def test_prediction_exception_with_a_code_that_is_no_error_is_a_500(server: ServerProcess, code: int) -> None:
    response = server.predict("errors", json.dumps({"code": code}).encode(), JSON)
    assert response.status == 500, response.text
    assert f"code {code}" in response.json()["message"]


def test_other_exceptions_are_500_with_their_message(server: ServerProcess) -> None:
    response = server.predict("errors", b'{"code": 0}', JSON)
    assert response.status == 500
    assert "KeyError" in response.json()["message"] and "missing" in response.json()["message"]


def test_intermediate_parts_are_sent_before_the_final_result(server: ServerProcess) -> None:
    response = server.predict("stream", b"go")
    assert response.status == 200, response.text
    assert response.body == b"part 0;part 1;done"


def test_a_class_handler_without_a_base_class_reads_its_config(server: ServerProcess) -> None:
    response = server.predict("plain", b"you")
    assert response.status == 200, response.text
    assert response.text == "hey, you"
    assert (SUPPORT / "ts_style" / "plain_class_handler.py").is_file()


DOUBLE_HANDLER = """
def handle(data, context):
    if data is None:
        return None
    return [item * 2 for item in data]
"""


def test_service_envelope_json_reshapes_requests_and_answers(tmp_path: Path) -> None:
    store = tmp_path / "model_store"
    store.mkdir()
    handler = tmp_path / "double_handler.py"
    handler.write_text(DOUBLE_HANDLER)
    make_archive(store, "double", str(handler))
    with running_server(tmp_path, store, ["double=double.mar"], extra_args=["--ncs"],
                        config="service_envelope=json\n") as server:  # fmt: skip
        response = server.predict("double", b'{"instances": [1, 2.5, "ab"]}', JSON)
        assert response.status == 200, response.text
        assert response.json() == {"predictions": [2, 5.0, "abab"]}
        refused = server.predict("double", b'{"rows": [1]}', JSON)
        assert refused.status == 400 and "instances" in refused.json()["message"]
