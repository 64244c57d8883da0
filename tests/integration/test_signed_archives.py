"""A server with trusted_archive_keys refuses unsigned, unknown-key and altered archives (400 naming the reason) at
start-up and over the management API, before any handler code runs; it serves the good ones."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.paths import script
from tests.support.server import ServerProcess, make_archive, running_server
from tests.support.signing import KeyPair, read_member, rewrite_zip, write_keypair

HANDLER = """\
import pathlib

from modelserve.handler import BaseHandler

# evidence that this file was imported: a refused archive must never get this far
pathlib.Path({marker!r}).write_text("imported")


class Echo(BaseHandler):
    def handle(self, data, context):
        return [item.get("body") for item in data]
"""


@dataclass
class Archives:
    store: Path
    trusted: KeyPair
    markers: Path

    def handler(self, name: str) -> str:
        path = self.markers.parent / f"handler_{name}.py"
        path.write_text(HANDLER.format(marker=str(self.markers / name)))
        return str(path)

    def make(self, name: str, key: KeyPair | None, tamper: bool = False) -> Path:
        path = make_archive(self.store, name, self.handler(name), config_yaml="minWorkers: 1\n",
                            sign_key=key.private if key else None)  # fmt: skip
        if tamper:  # one more line of handler code after signing
            handler = read_member(path, f"handler_{name}.py") + b"\nprint('also this')\n"
            rewrite_zip(path, {f"handler_{name}.py": handler})
        return path

    def imported(self, name: str) -> bool:
        return (self.markers / name).exists()


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> Archives:
    root = tmp_path_factory.mktemp("signed")
    (root / "store").mkdir()
    (root / "markers").mkdir()
    made = Archives(store=root / "store", trusted=write_keypair(root / "keys", "trusted"), markers=root / "markers")
    stranger = write_keypair(root / "keys", "stranger")
    made.make("good", made.trusted)
    made.make("later", made.trusted)
    for prefix in ("", "api_"):
        made.make(f"{prefix}unsigned", None)
        made.make(f"{prefix}tampered", made.trusted, tamper=True)
        made.make(f"{prefix}stranger", stranger)
    made.make("optional_tampered", made.trusted, tamper=True)
    return made


def signing_config(archives: Archives, required: bool) -> str:
    return f"trusted_archive_keys={archives.trusted.public}\nrequire_signed_archives={str(required).lower()}\n"


@pytest.fixture(scope="module")
def strict(archives: Archives, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    models = ["good.mar", "unsigned.mar", "tampered.mar", "stranger.mar"]
    config = signing_config(archives, True)
    workdir = tmp_path_factory.mktemp("strict")
    with running_server(
        workdir, archives.store, models, config=config, extra_args=["--ncs", "--enable-model-api"]
    ) as server:
        yield server


def test_good_signed_archive_is_served(strict: ServerProcess, archives: Archives) -> None:
    assert strict.predict("good", b"signed").body == b"signed"
    assert archives.imported("good"), "the marker mechanism works: a served archive's handler was imported"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("unsigned", "archive is not signed, and require_signed_archives=true"),
        ("tampered", "archive was altered after signing: 'handler_tampered.py' changed"),
        ("stranger", "archive is signed by an unknown key SHA256:"),
    ],
)
def test_startup_refuses_before_any_handler_code_runs(
    strict: ServerProcess, archives: Archives, name: str, reason: str
) -> None:
    assert strict.manage("GET", f"/models/{name}").status == 404
    assert f"cannot load {name}.mar: {reason}" in strict.log_text()
    assert not archives.imported(name)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("api_unsigned", "archive is not signed"),
        ("api_tampered", "'handler_api_tampered.py' changed"),
        ("api_stranger", "signed by an unknown key"),
    ],
)
def test_management_api_refuses_with_400_naming_the_reason(
    strict: ServerProcess, archives: Archives, name: str, reason: str
) -> None:
    response = strict.manage("POST", f"/models?url={name}.mar&synchronous=true")
    assert response.status == 400 and reason in response.json()["message"], response.text
    assert not archives.imported(name)


def test_management_api_registers_a_good_signed_archive(strict: ServerProcess) -> None:
    response = strict.manage("POST", "/models?url=later.mar&synchronous=true")
    assert response.status == 200, response.text
    assert strict.predict("later", b"ok").body == b"ok"


def test_optional_signatures_accept_unsigned_but_refuse_an_altered_signed_archive(
    archives: Archives, tmp_path: Path
) -> None:
    config = signing_config(archives, False)
    with running_server(tmp_path, archives.store, [], config=config, extra_args=["--ncs", "--enable-model-api"]) as srv:
        assert srv.manage("POST", "/models?url=unsigned.mar&synchronous=true").status == 200
        refused = srv.manage("POST", "/models?url=optional_tampered.mar&synchronous=true")
        assert refused.status == 400 and "altered after signing" in refused.json()["message"], refused.text
        assert not archives.imported("optional_tampered")


def test_required_signatures_without_a_trusted_key_stop_the_start(tmp_path: Path) -> None:
    (tmp_path / "config.properties").write_text("require_signed_archives=true\n")
    command = [script("modelserve"), "--start", "--foreground", "--ts-config", "config.properties", "--ncs"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "needs at least one key in trusted_archive_keys" in result.stderr
