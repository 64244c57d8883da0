"""TorchServe's management API regression run, case by case, against one modelserve server.

TorchServe checks its management API with a Postman collection of 82 requests (test/postman/management_data.json),
run in order against one server started with ``--ncs``, token authorization off and the model API on, a model store
of archives made from its examples, and ``default_workers_per_model`` unset (which, for registrations, means no
worker unless ``initial_workers`` says otherwise). The table below restates those cases in order, with the status
TorchServe 0.12 answers (every one checked against the real server) and the status modelserve answers.

How the run is reproduced here:

* The archives are small ones made here, under the file names of the collection's environment (squeezenet1_1.mar,
  mnist.mar, densenet161.mar, resnet-152-batch.mar, resnet-18.mar); their handler echoes its input.
* ``default_workers_per_model=0`` gives TorchServe's "no worker unless asked" for registrations (modelserve's own
  default starts a few), so that registering an archive with an unusable handler succeeds as it does there.
* Two cases register from https://torchserve.pytorch.org/mar_files/...; those URLs point at a loopback HTTP server
  that serves the same file names (densenet161.mar, and a 404 for invalid-resnet-18.mar), allowed by
  ``allowed_urls`` (TorchServe allows every URL by default, modelserve none).

Four cases answer differently on purpose; their rows say why:

* case 4, registering from a URL a model that is already registered: TorchServe saves every download into the
  model store and refuses one whose file name is taken there, with a 500 ("Model file already exists
  densenet161.mar"). modelserve keeps downloads out of the model store, so the conflict it finds is the version
  already registered: 409, a client error.
* case 29, registering with a ``handler`` path that is not a file of the archive: TorchServe takes a handler path
  from anywhere on the server's disk, and registers it (it fails only once a worker tries to load it). modelserve
  loads handlers only from inside the archive or from its built-ins, and refuses the registration: 400 (so case
  30, which unregisters what case 29 registered, finds nothing: 404).
* case 69, scaling to ``min_worker=-1``: TorchServe's worker loop indexes a list with -1 and answers 500
  (IndexOutOfBoundsException). Bad input gets a 400 here.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import call, make_archive, running_server

ARCHIVES = {"squeezenet1_1": "squeezenet1_1", "mnist": "mnist", "densenet161": "densenet161",
            "resnet-152-batch": "resnet-152-batch", "resnet-18": "resnet-18"}  # fmt: skip


@dataclass(frozen=True)
class Case:
    number: int
    what: str
    method: str
    path: str  # {origin} is the loopback stand-in for https://torchserve.pytorch.org
    torchserve: int
    ours: int
    says: str | dict[str, Any] | None = None  # text in "status"/"message", or the whole JSON answer

    def __post_init__(self) -> None:
        assert self.ours == self.torchserve or self.number in DIFFERENT_ON_PURPOSE, self


DIFFERENT_ON_PURPOSE = {4, 29, 30, 69}
SQ = "squeezenet1_1"
ZERO = " registered with 0 initial workers. Use scale workers API to add workers for the model."
RESNET18_ONLY = [{"modelName": "resnet-18", "modelUrl": "resnet-18.mar"}]

CASES = [
    Case(1, "register squeezenet1_1 from the store", "POST", f"models?url={SQ}.mar&model_name={SQ}", 200, 200,
         f'Model "{SQ}" Version: 1.0' + ZERO),
    Case(2, "register mnist", "POST", "models?url=mnist.mar&model_name=mnist", 200, 200),
    Case(3, "register densenet161", "POST", "models?url=densenet161.mar&model_name=densenet161", 200, 200),
    Case(4, "register densenet161 again, from a URL", "POST",
         "models?url={origin}/mar_files/densenet161.mar&model_name=densenet161", 500, 409, "already registered"),
    Case(5, "unregister densenet161", "DELETE", "models/densenet161", 200, 200, 'Model "densenet161" unregistered'),
    Case(6, "register without a url", "POST", "models", 400, 400, "Parameter url is required."),
    Case(7, "unregister mnist", "DELETE", "models/mnist", 200, 200),
    Case(8, "register mnist with a handler that does not exist (no worker is started)", "POST",
         "models?url=mnist.mar&model_name=mnist&handler=invalidHandler", 200, 200, 'Model "mnist" Version: 1.0' + ZERO),
    Case(9, "unregister that mnist", "DELETE", "models/mnist", 200, 200),
    Case(10, "register it once more", "POST", "models?url=mnist.mar&model_name=mnist&handler=invalidHandler", 200,
         200),
    Case(11, "scale it to one worker and wait: the handler cannot load", "PUT",
         "models/mnist?min_worker=1&synchronous=true", 500, 500, "Failed to start workers for model mnist"),
    Case(12, "unregister the broken mnist", "DELETE", "models/mnist", 200, 200),
    Case(13, "describe every version of squeezenet1_1", "GET", f"models/{SQ}/all", 200, 200),
    Case(14, "describe version 1.0", "GET", f"models/{SQ}/1.0", 200, 200),
    Case(15, "describe the default version", "GET", f"models/{SQ}", 200, 200),
    Case(16, "unregister squeezenet1_1", "DELETE", f"models/{SQ}", 200, 200),
    Case(17, "register with an unknown runtime", "POST", f"models?url={SQ}.mar&model_name={SQ}&runtime=python4", 400,
         400),
    Case(18, "list with empty limit and page token", "GET", "models?limit=&next_page_token=", 200, 200,
         {"models": []}),
    Case(19, "register squeezenet1_1 again", "POST", f"models?url={SQ}.mar&model_name={SQ}", 200, 200),
    Case(20, "scale to one worker without waiting", "PUT", f"models/{SQ}?min_worker=1", 202, 202,
         "Processing worker updates..."),
    Case(21, "scale to one worker and wait", "PUT", f"models/{SQ}?min_worker=1&synchronous=true", 200, 200,
         f"Workers scaled to 1 for model: {SQ}"),
    Case(22, "scale version 1.0 and wait", "PUT", f"models/{SQ}/1.0?min_worker=1&synchronous=true", 200, 200,
         f"Workers scaled to 1 for model: {SQ}, version: 1.0"),
    Case(23, "scale a version that does not exist", "PUT", f"models/{SQ}/0.0?min_worker=1&synchronous=true", 404,
         404, f"Model version: 0.0 does not exist for model: {SQ}"),
    Case(24, "scale with a GPU count (ignored)", "PUT", f"models/{SQ}?min_worker=1&number_gpu=1", 202, 202),
    Case(25, "make 1.0 the default", "PUT", f"models/{SQ}/1.0/set-default", 200, 200,
         f'Default version successfully updated for model "{SQ}" to "1.0"'),
    Case(26, "make an unknown version the default", "PUT", f"models/{SQ}/0.0/set-default", 404, 404,
         f"Model version 0.0 does not exist for model {SQ}"),
    Case(27, "set the default of an unknown model", "PUT", "models/squeezenet0_1/1.0/set-default", 404, 404,
         "Model not found: squeezenet0_1"),
    Case(28, "unregister squeezenet1_1 (one worker running)", "DELETE", f"models/{SQ}", 200, 200),
    Case(29, "register naming a handler file that is not there (no worker is started)", "POST",
         f"models?url={SQ}.mar&model_name={SQ}&handler=serve/ts/torch_handler/image_classifier.py:handle", 200, 400,
         "the archive contains no file"),
    Case(30, "unregister it (here: there is nothing to unregister)", "DELETE", f"models/{SQ}", 200, 404),
    Case(31, "register with three workers that get no time to start", "POST",
         f"models?url={SQ}.mar&model_name={SQ}&batch_size=3&initial_workers=3&startup_timeout=0", 500, 500,
         f"Failed to start workers for model {SQ} version: 1.0"),
    Case(32, "register with no time to start but no worker", "POST",
         f"models?url={SQ}.mar&model_name={SQ}&startup_timeout=0", 200, 200),
    Case(33, "unregister it", "DELETE", f"models/{SQ}", 200, 200),
    Case(34, "register resnet-152-batch as resnet152 with a batch size", "POST",
         "models?url=resnet-152-batch.mar&model_name=resnet152&batch_size=2", 200, 200),
    Case(35, "unregister resnet152", "DELETE", "models/resnet152", 200, 200),
    Case(36, "register with a batch size that is no number (ignored) and one worker", "POST",
         "models?url=resnet-152-batch.mar&model_name=resnet152&batch_size=dd&initial_workers=1", 200, 200,
         'Model "resnet152" Version: 1.0 registered with 1 initial workers'),
    Case(37, "unregister resnet152", "DELETE", "models/resnet152", 200, 200),
    Case(38, "register with a batch delay that is no number (ignored)", "POST",
         "models?url=resnet-152-batch.mar&model_name=resnet152&batch_size=2&initial_workers=1&max_batch_delay=junk",
         200, 200),
    Case(39, "unregister resnet152", "DELETE", "models/resnet152", 200, 200),
    Case(40, "register with a negative worker count (no worker)", "POST",
         f"models?url={SQ}.mar&model_name={SQ}&initial_workers=-1", 200, 200, f'Model "{SQ}" Version: 1.0' + ZERO),
    Case(41, "unregister it", "DELETE", f"models/{SQ}", 200, 200),
    Case(42, "register resnet-18 synchronously", "POST",
         "models?url=resnet-18.mar&model_name=resnet-18&synchronous=true", 200, 200),
    Case(43, "unregister resnet-18", "DELETE", "models/resnet-18", 200, 200),
    Case(44, "register with a synchronous value that is no boolean", "POST",
         "models?url=resnet-18.mar&model_name=resnet-18&synchronous=-1", 200, 200),
    Case(45, "unregister resnet-18", "DELETE", "models/resnet-18", 200, 200),
    Case(46, "register without waiting: no worker, so the answer is final", "POST",
         "models?url=resnet-18.mar&model_name=resnet-18&synchronous=false", 200, 200),
    Case(47, "list one per page", "GET", "models?limit=1", 200, 200,
         {"nextPageToken": "1", "models": RESNET18_ONLY}),
    Case(48, "list with a negative limit (the default)", "GET", "models?limit=-1", 200, 200,
         {"models": RESNET18_ONLY}),
    Case(49, "list the second page", "GET", "models?limit=1&next_page_token=1", 200, 200, {"models": []}),
    Case(50, "list from a negative page token (the first)", "GET", "models?limit=1&next_page_token=-1", 200, 200,
         {"nextPageToken": "1", "models": RESNET18_ONLY}),
    Case(51, "scale with only a GPU count: one worker, not waiting", "PUT", "models/resnet-18?number_gpu=10", 202, 202),
    Case(52, "the same with a negative GPU count", "PUT", "models/resnet-18?number_gpu=-1", 202, 202),
    Case(53, "scale to one worker and wait", "PUT", "models/resnet-18?min_worker=1&max_worker=1&synchronous=true",
         200, 200, "Workers scaled to 1 for model: resnet-18"),
    Case(54, "scale to one worker, not waiting", "PUT",
         "models/resnet-18?min_worker=1&max_worker=1&synchronous=false", 202, 202),
    Case(55, "scale with a timeout of -1 (ignored)", "PUT", "models/resnet-18?timeout=-1", 202, 202),
    Case(56, "scale with a timeout of 0 (ignored)", "PUT", "models/resnet-18?timeout=0", 202, 202),
    Case(57, "register with an empty url", "post", "models?url=&model_name=resnet-18", 404, 404),
    Case(58, "register from a URL that answers 404", "POST",
         "models?url={origin}/mar_files/invalid-resnet-18.mar&model_name=invalid-resnet18", 400, 400),
    Case(59, "describe a model that does not exist", "GET", "models/invalid_squeezenet1_1", 404, 404,
         "Model not found: invalid_squeezenet1_1"),
    Case(60, "describe a version of a model that is gone", "GET", f"models/{SQ}/0.0", 404, 404),
    Case(61, "list from a page token past the end", "GET", "models?next_page_token=12", 200, 200, {"models": []}),
    Case(62, "scale with a synchronous value that is no boolean (not waiting)", "PUT",
         "models/resnet-18?min_worker=1&synchronous=Nan", 202, 202),
    Case(63, "scale with neither value a valid one (one worker, not waiting)", "PUT",
         "models/resnet-18?min_worker=nan&synchronous=nan", 202, 202),
    Case(64, "scale with no parameter at all (one worker)", "PUT", "models/resnet-18", 202, 202),
    Case(65, "scale a model that does not exist", "PUT", "models/resnet181?min_worker=1", 404, 404),
    Case(66, "scale to a maximum below the minimum", "PUT", "models/resnet-18?min_worker=2&max_worker=1", 400, 400,
         "max_worker cannot be less than min_worker."),
    Case(67, "scale to one worker", "PUT", "models/resnet-18?min_worker=1", 202, 202),
    Case(68, "scale to no worker", "PUT", "models/resnet-18?min_worker=0", 202, 202),
    Case(69, "scale to a negative minimum", "PUT", "models/resnet-18?min_worker=-1", 500, 400, "min_worker"),
    Case(70, "scale to a negative maximum", "PUT", "models/resnet-18?max_worker=-1", 400, 400,
         "max_worker cannot be less than min_worker."),
    Case(71, "set the default of a model that does not exist", "PUT", "models/invalid_squeezenet1_1/1.0/set-default",
         404, 404),
    Case(72, "unregister resnet-18", "DELETE", "models/resnet-18", 200, 200, 'Model "resnet-18" unregistered'),
    Case(73, "unregister a version of a model that is gone", "DELETE", f"models/{SQ}/0.0", 404, 404),
    Case(74, "register squeezenet1_1", "POST", f"models?url={SQ}.mar&model_name={SQ}", 200, 200),
    Case(75, "unregister it, path with a trailing slash, synchronous=true", "DELETE",
         f"models/{SQ}/?synchronous=true", 200, 200, f'Model "{SQ}" unregistered'),
    Case(76, "register squeezenet1_1", "POST", f"models?url={SQ}.mar&model_name={SQ}", 200, 200),
    Case(77, "unregister with a trailing slash and synchronous=nan", "DELETE", f"models/{SQ}/?synchronous=nan", 200,
         200),
    Case(78, "register squeezenet1_1", "POST", f"models?url={SQ}.mar&model_name={SQ}", 200, 200),
    Case(79, "unregister with a trailing slash and timeout=true", "DELETE", f"models/{SQ}/?timeout=true", 200, 200),
    Case(80, "register squeezenet1_1", "POST", f"models?url={SQ}.mar&model_name={SQ}", 200, 200),
    Case(81, "unregister with a trailing slash and two odd parameters", "DELETE",
         f"models/{SQ}/?timeout=true&synchronous=-1", 200, 200),
    Case(82, "unregister a model that does not exist", "DELETE", "models/invalid_squeezenet1_1", 404, 404,
         "Model not found: invalid_squeezenet1_1"),
]  # fmt: skip


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[str]:
    """The stand-in for torchserve.pytorch.org: /mar_files/densenet161.mar, and 404 for anything else."""
    root = tmp_path / "origin"
    (root / "mar_files").mkdir(parents=True)
    make_archive(root / "mar_files", "densenet161", "echo_handler.py")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietFiles, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _said(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")


def test_the_82_torchserve_management_cases_in_order(tmp_path: Path, store: Path, origin: str) -> None:
    assert [case.number for case in CASES] == list(range(1, 83))
    for name, model_name in ARCHIVES.items():
        made = make_archive(store, model_name, "echo_handler.py")
        assert made.name == f"{name}.mar"
    config = (
        "disable_token_authorization=true\nenable_model_api=true\ndefault_workers_per_model=0\n"
        f"allowed_urls={origin}/mar_files/.*\n"
    )
    mismatches = []
    with running_server(tmp_path, store, [], extra_args=["--ncs"], config=config) as server:
        for case in CASES:
            path = case.path.replace("{origin}", origin)
            response = call(case.method.upper(), f"{server.management}/{path}", timeout=120)
            answer = _said(response.body)
            if response.status != case.ours:
                mismatches.append(f"case {case.number} ({case.what}): {case.method} /{path} answered "
                                  f"{response.status}, expected {case.ours}: {answer}")  # fmt: skip
                continue
            if isinstance(case.says, dict) and answer != case.says:
                mismatches.append(f"case {case.number}: answer {answer}, expected {case.says}")
            elif isinstance(case.says, str):
                text = answer.get("status") or answer.get("message") if isinstance(answer, dict) else answer
                if case.says not in str(text):
                    mismatches.append(f"case {case.number}: said {text!r}, expected {case.says!r} in it")
        assert not mismatches, "\n".join(mismatches)
        assert call("GET", f"{server.management}/models").json() == {"models": []}
        assert "unhandled error" not in server.log_text()
