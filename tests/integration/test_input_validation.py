"""Every name, version, handler and number a user sends is checked at the edge, by one set of rules."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.server import ServerProcess, call, make_archive, running_server

MODEL_API = ["--enable-model-api", "--ncs", "--disable-token-auth"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("validation")
    store = root / "model_store"
    store.mkdir()
    make_archive(store, "echo", "echo_handler.py", config_yaml="minWorkers: 0\n")
    make_archive(store, "one", "echo_handler.py", config_yaml="minWorkers: 1\n")
    climbing = make_archive(store, "climbing", "echo_handler.py", config_yaml="minWorkers: 0\n")
    _set_manifest_version(climbing, "../../x/y")
    with running_server(root, store, [], extra_args=MODEL_API, config="max_workers_total=3\n") as running:
        yield running


def _set_manifest_version(archive: Path, version: str) -> None:
    """Rewrite an archive's manifest with another modelVersion (the archiver itself would refuse to write it)."""
    with zipfile.ZipFile(archive) as source:
        entries = {info.filename: source.read(info) for info in source.infolist()}
    manifest = json.loads(entries["MAR-INF/MANIFEST.json"])
    manifest["model"]["modelVersion"] = version
    entries["MAR-INF/MANIFEST.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(archive, "w") as target:
        for name, data in entries.items():
            target.writestr(name, data)


def _register(server: ServerProcess, query: str) -> tuple[int, str]:
    response = call("POST", f"{server.management}/models?{query}", timeout=60)
    return response.status, response.json().get("message") or response.json().get("status", "")


@pytest.mark.parametrize("name", ["a/b", "../../etc", "evil\u202etxt.mar", "ok\nINFO forged log line", "-x"])
def test_model_names_outside_the_archivers_rule_are_refused(server: ServerProcess, name: str) -> None:
    status, message = _register(server, f"url=echo.mar&model_name={quote(name)}")
    assert status == 400, message
    assert "invalid model_name" in message
    assert not any(line.startswith("INFO forged") for line in server.lines)  # no log line of its own making
    assert call("GET", server.management + "/models").json()["models"] == []


def test_a_handler_from_elsewhere_on_the_servers_disk_is_refused_and_never_run(
    server: ServerProcess, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    planted = tmp_path / "planted.py"
    planted.write_text(f"open({str(marker)!r}, 'w').close()\ndef handle(data, context): return data\n")
    for handler in (str(planted), f"../../../../../../..{planted}", "planted.py"):
        status, message = _register(server, f"url=one.mar&handler={quote(handler)}")
        assert (status, "invalid handler" in message) == (400, True), message
    assert not marker.exists()
    assert call("GET", server.management + "/models").json()["models"] == []


@pytest.mark.parametrize(
    ("query", "says"),
    [("batch_size=1000000000", "parameter batch_size: must be at most 4096"),
     (f"batch_size={quote(chr(0xFF11) + chr(0xFF12))}", "parameter batch_size: expected an integer in ASCII digits"),
     ("max_batch_delay=1e309", "parameter max_batch_delay: expected an integer"),
     ("response_timeout=99999999999", "parameter response_timeout: must be at most 604800"),
     ("initial_workers=2.5", "parameter initial_workers: expected an integer"),
     ("initial_workers=4", "max_workers_total=3")],
)  # fmt: skip
def test_numbers_that_cannot_be_taken_are_a_400_naming_the_parameter(
    server: ServerProcess, query: str, says: str
) -> None:
    status, message = _register(server, f"url=echo.mar&{query}")
    assert (status, says in message) == (400, True), message


def test_a_json_body_with_an_overflowing_number_is_a_400(server: ServerProcess) -> None:
    body = b'{"url": "echo.mar", "max_batch_delay": 1e309}'
    response = call("POST", server.management + "/models", body, {"Content-Type": "application/json"})
    assert response.status == 400, response.text
    assert "max_batch_delay" in response.json()["message"]


def test_values_that_are_no_number_at_all_are_still_ignored_as_torchserve_does(server: ServerProcess) -> None:
    status, message = _register(server, "url=echo.mar&batch_size=dd&max_batch_delay=junk&initial_workers=nan")
    assert status == 200, message
    assert call("DELETE", server.management + "/models/echo").status == 200


def test_scaling_past_max_workers_total_is_refused(server: ServerProcess) -> None:
    status, message = _register(server, "url=one.mar&synchronous=true")
    assert status == 200, message
    try:
        refused = call("PUT", server.management + "/models/one?min_worker=4&synchronous=true")
        assert refused.status == 400
        assert "max_workers_total=3" in refused.json()["message"]
        assert call("PUT", server.management + "/models/one?min_worker=3&synchronous=true", timeout=60).status == 200
        assert len(call("GET", server.management + "/models/one").json()[0]["workers"]) == 3
        full = _register(server, "url=echo.mar&initial_workers=1")
        assert full[0] == 400 and "with the 3 already running" in full[1], full
    finally:
        assert call("DELETE", server.management + "/models/one").status == 200


def test_a_manifest_version_with_path_parts_is_refused_naming_the_field(server: ServerProcess) -> None:
    status, message = _register(server, "url=climbing.mar")
    assert status == 400
    assert "model.modelVersion" in message and "../../x/y" in message


def test_the_repository_extension_applies_the_same_name_rule(server: ServerProcess) -> None:
    response = call("POST", f"{server.management}/v2/repository/models/{quote('a' + chr(0x202E) + 'b')}/load")
    assert response.status == 400
    assert "invalid model_name" in response.json()["error"]
