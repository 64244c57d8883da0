"""Registration from URLs: default deny, allowed URLs fetched, redirects re-checked, size capped; and --models forms."""

from __future__ import annotations

import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelserve.archive.packer import PackRequest, pack_archive
from tests.support.paths import SUPPORT
from tests.support.server import ServerProcess, make_archive, running_server


class ArchiveServer(http.server.ThreadingHTTPServer):
    """A loopback HTTP server: /echo.mar, /big.mar, and /redirect?to=URL."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[str] = []
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: ArchiveServer

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.split("=", 1)[1])
            self.end_headers()
            return
        data = self.server.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArchiveServer]:
    work = tmp_path_factory.mktemp("origin")
    out = work / "out"
    out.mkdir()
    config = work / "model-config.yaml"
    config.write_text("minWorkers: 1\n")
    path = pack_archive(PackRequest(model_name="remote", handler=str(SUPPORT / "echo_handler.py"), config_file=config,
                                    export_path=out))  # fmt: skip
    server = ArchiveServer({"echo.mar": path.read_bytes(), "big.mar": b"\0" * 300_000})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def server(origin: ArchiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("urls")
    store = root / "model_store"
    store.mkdir()
    allowed = f"allowed_urls={origin.base}/(echo|big|redirect).*\nmax_archive_size=200000\n"
    with running_server(root, store, [], extra_args=["--ncs", "--enable-model-api"], config=allowed) as running:
        yield running


def test_allowed_url_is_fetched_and_served(server: ServerProcess, origin: ArchiveServer) -> None:
    response = server.manage("POST", f"/models?url={origin.base}/echo.mar&synchronous=true")
    assert response.status == 200, response.text
    assert server.predict("remote", b"from afar").body == b"from afar"
    assert server.manage("GET", "/models/remote").json()[0]["modelUrl"] == f"{origin.base}/echo.mar"


def test_url_outside_allowed_urls_is_refused_before_any_request(server: ServerProcess, origin: ArchiveServer) -> None:
    before = len(origin.requests)
    response = server.manage("POST", f"/models?url={origin.base}/other.mar")
    assert response.status == 403 and "allowed_urls" in response.json()["message"]
    assert len(origin.requests) == before, "nothing may be fetched from a URL that is not allowed"


def test_redirect_to_a_forbidden_url_is_refused(server: ServerProcess, origin: ArchiveServer) -> None:
    before = len(origin.requests)
    target = f"{origin.base}/secret.mar"
    response = server.manage("POST", f"/models?url={origin.base}/redirect?to={target}")
    assert response.status == 403, response.text
    assert origin.requests[before:] == [f"/redirect?to={target}"], "the redirect target is never requested"


def test_oversized_download_is_refused(server: ServerProcess, origin: ArchiveServer) -> None:
    response = server.manage("POST", f"/models?url={origin.base}/big.mar")
    assert response.status == 400 and "larger than" in response.json()["message"]


def test_models_flag_takes_directories_and_tar_archives(tmp_path: Path, store: Path) -> None:
    make_archive(store, "plain", "echo_handler.py", config_yaml="minWorkers: 1\n", archive_format="no-archive")
    make_archive(store, "packed", "echo_handler.py", config_yaml="minWorkers: 1\n", archive_format="tgz")
    shutil.copytree(store / "plain", store / "copy_of_plain")
    with running_server(tmp_path, store, ["plain,", "named=packed.tar.gz"], extra_args=["--ncs"]) as server:
        names = {m["modelName"] for m in server.manage("GET", "/models").json()["models"]}
        assert names == {"plain", "named"}
        assert server.predict("plain", b"d").body == b"d"
        assert server.predict("named", b"t").body == b"t"
