"""Registration from URLs: default deny, rules matched on the normalised URL (which is the one fetched), redirects
re-checked, credentials never shown, size and every phase's time capped; and --models forms."""

from __future__ import annotations

import base64
import contextlib
import http.server
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

from modelserve.archive.packer import PackRequest, pack_archive
from tests.support.paths import SUPPORT
from tests.support.server import Response, ServerProcess, make_archive, running_server, wait_for


class ArchiveServer(http.server.ThreadingHTTPServer):
    """A loopback HTTP server: its files, /redirect?to=URL, /hang (never answers), /trickle (a byte at a time).

    ``requests`` logs every request target exactly as it arrived, ``authorizations`` the Authorization headers.
    """

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[str] = []
        self.authorizations: list[str] = []
        self.release = threading.Event()  # set at shutdown: /hang and /trickle stop
        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(http.server.BaseHTTPRequestHandler):
    server: ArchiveServer

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        self.server.authorizations.append(self.headers.get("Authorization", ""))
        if self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", unquote(self.path.split("=", 1)[1]))
            self.end_headers()
            return
        if self.path == "/hang":
            self.server.release.wait(30)
            return
        if self.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            deadline = time.monotonic() + 30
            while not self.server.release.wait(0.2) and time.monotonic() < deadline:
                try:
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                except OSError:  # the server gave up on us, as it should
                    return
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
    data = path.read_bytes()
    files = {"echo.mar": data, "big.mar": b"\0" * 300_000, "secret.mar": data, "ok/echo.mar": data}
    with serving(ArchiveServer(files)) as server:
        yield server


@pytest.fixture(scope="module")
def elsewhere() -> Iterator[ArchiveServer]:
    """A second origin, on a port no rule allows."""
    with serving(ArchiveServer({"ok/echo.mar": b"never fetched"})) as server:
        yield server


@contextlib.contextmanager
def serving(server: ArchiveServer) -> Iterator[ArchiveServer]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(10)


DOWNLOAD_TIMEOUT_S = 3.0
IDLE_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(origin: ArchiveServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("urls")
    store = root / "model_store"
    store.mkdir()
    config = (
        f"allowed_urls={origin.base}/(echo|big|redirect).*,{origin.base}/ok/.*,{origin.base}/(hang|trickle)\n"
        f"max_archive_size=200000\nurl_download_timeout={DOWNLOAD_TIMEOUT_S}\nurl_idle_timeout={IDLE_TIMEOUT_S}\n"
    )
    with running_server(root, store, [], extra_args=["--enable-model-api"], config=config) as running:
        yield running


def register(server: ServerProcess, url: str, name: str | None = None) -> Response:
    query = f"url={quote(url, safe='')}&synchronous=true" + (f"&model_name={name}" if name else "")
    return server.manage("POST", f"/models?{query}")


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
    assert response.status == 400 and "larger than max_archive_size" in response.json()["message"]


def test_dot_segments_cannot_leave_an_allowed_path(server: ServerProcess, origin: ArchiveServer) -> None:
    before = len(origin.requests)
    response = register(server, f"{origin.base}/ok/../secret.mar", "dotted")
    assert response.status == 403 and "does not match allowed_urls" in response.json()["message"], response.text
    assert origin.requests[before:] == [], "the normalised URL /secret.mar is outside every rule: nothing is fetched"


def test_userinfo_cannot_pass_for_an_allowed_host(
    origin: ArchiveServer, elsewhere: ArchiveServer, tmp_path: Path, store: Path
) -> None:
    # a rule that trusts everything of one origin: the raw string "http://127.0.0.1:A@localhost:B/..." matches it
    config = f"allowed_urls={origin.base}.*\n"
    with running_server(tmp_path, store, [], extra_args=["--ncs", "--enable-model-api"], config=config) as loose:
        port = elsewhere.server_address[1]
        response = register(loose, f"{origin.base}@localhost:{port}/ok/echo.mar", "userinfo")
        assert response.status == 403 and "***@localhost" in response.json()["message"], response.text
        assert elsewhere.requests == [], "the host after '@' is the one a rule is matched against"
        assert register(loose, f"{origin.base}/ok/echo.mar", "direct").status == 200, "the rule itself works"


def test_the_normalised_url_is_the_one_fetched(server: ServerProcess, origin: ArchiveServer) -> None:
    before = len(origin.requests)
    response = register(server, f"{origin.base.upper()}/ok/sub/./%2e%2e/echo.mar", "normalised")
    assert response.status == 200, response.text
    assert origin.requests[before:] == ["/ok/echo.mar"]
    assert server.manage("GET", "/models/normalised").json()[0]["modelUrl"] == f"{origin.base}/ok/echo.mar"


def test_redirect_that_normalises_outside_the_rules_is_refused(server: ServerProcess, origin: ArchiveServer) -> None:
    before = len(origin.requests)
    target = quote(f"{origin.base}/ok/../secret.mar", safe="")
    response = register(server, f"{origin.base}/redirect?to={target}", "redirected")
    assert response.status == 403, response.text
    assert len(origin.requests[before:]) == 1, "only the redirect itself is requested, never its target"


def test_credentials_are_sent_but_never_shown_stored_or_logged(server: ServerProcess, origin: ArchiveServer) -> None:
    secret = "hunter2-not-for-logs"
    before = len(origin.requests)
    response = register(server, f"http://alice:{secret}@{origin.base[7:]}/ok/echo.mar", "credentialed")
    assert response.status == 200, response.text
    expected = "Basic " + base64.b64encode(f"alice:{secret}".encode()).decode()
    assert origin.authorizations[before:] == [expected], "the credentials are used for the request"
    described = server.manage("GET", "/models/credentialed").json()[0]["modelUrl"]
    assert described == f"http://***@{origin.base[7:]}/ok/echo.mar"
    refused = register(server, f"http://alice:{secret}@{origin.base[7:]}/elsewhere.mar", "refused")
    assert refused.status == 403 and secret not in refused.text and "***@" in refused.text
    snapshot = server.workdir / "logs" / "config" / "snapshot.json"
    wait_for(lambda: "credentialed" in snapshot.read_text(), 10, "the snapshot names the model")
    assert secret not in snapshot.read_text()
    assert secret not in server.log_text()
    assert "alice" not in snapshot.read_text() + described


def test_a_server_that_never_answers_fails_with_a_named_timeout(server: ServerProcess, origin: ArchiveServer) -> None:
    started = time.monotonic()
    response = register(server, f"{origin.base}/hang", "hanging")
    elapsed = time.monotonic() - started
    assert response.status == 400, response.text
    port = origin.server_address[1]
    assert response.json()["message"] == f"no response from 127.0.0.1:{port} within {IDLE_TIMEOUT_S:g} s"
    assert elapsed < IDLE_TIMEOUT_S + 2


def test_a_download_that_never_ends_fails_at_the_total_deadline(server: ServerProcess, origin: ArchiveServer) -> None:
    started = time.monotonic()
    response = register(server, f"{origin.base}/trickle", "trickling")
    elapsed = time.monotonic() - started
    assert response.status == 400, response.text
    assert "exceeded 3 s total (url_download_timeout)" in response.json()["message"]
    assert DOWNLOAD_TIMEOUT_S - 0.5 < elapsed < DOWNLOAD_TIMEOUT_S + 2


def test_a_url_of_another_scheme_is_refused(server: ServerProcess) -> None:
    response = register(server, "file:///etc/passwd", "local")
    assert response.status == 403 and "only http and https" in response.json()["message"]


def test_models_flag_takes_directories_and_tar_archives(tmp_path: Path, store: Path) -> None:
    make_archive(store, "plain", "echo_handler.py", config_yaml="minWorkers: 1\n", archive_format="no-archive")
    make_archive(store, "packed", "echo_handler.py", config_yaml="minWorkers: 1\n", archive_format="tgz")
    shutil.copytree(store / "plain", store / "copy_of_plain")
    with running_server(tmp_path, store, ["plain,", "named=packed.tar.gz"], extra_args=["--ncs"]) as server:
        names = {m["modelName"] for m in server.manage("GET", "/models").json()["models"]}
        assert names == {"plain", "named"}
        assert server.predict("plain", b"d").body == b"d"
        assert server.predict("named", b"t").body == b"t"
