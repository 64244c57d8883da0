"""Batching by default: built-in handlers (and handlers that declare ``default_batch_size``) batch when no batchSize is
configured; custom handlers keep batch 1; a configured batchSize always wins; a model that cannot take the batches
the default forms still answers every request."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from tests.support import models
from tests.support.server import Response, ServerProcess, call, make_archive, running_server, wait_for

ONE_WORKER = "minWorkers: 1\nmaxWorkers: 1\n"


def describe_batch_size(server: ServerProcess, model: str) -> int:
    return int(server.manage("GET", f"/models/{model}").json()[0]["batchSize"])


def held_then_four(
    server: ServerProcess, model: str, release: Path, name: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One request held in the worker, four more sent meanwhile, then the hold released; the five answers.

    With a maxBatchDelay of 5 s the four queued requests leave as one batch as soon as they make a batch of 4, and
    one at a time when the batch size is 1: the result does not depend on timing."""
    with ThreadPoolExecutor(5) as pool:
        first: Future[Response] = pool.submit(server.predict, model, f"hold:{name}".encode())
        wait_for(lambda: "BUSY" in server.manage("GET", f"/models/{model}").text, 20, "the held batch is computing")
        rest = [pool.submit(server.predict, model, f"r{i}".encode()) for i in range(4)]
        (release / name).touch()
        answers = [f.result() for f in rest]
        held = first.result()
    assert held.status == 200, held.text
    assert all(a.status == 200 for a in answers), [a.text for a in answers]
    return held.json(), [a.json() for a in answers]


def declared_config(tmp_path: Path, **handler: object) -> str:
    settings = "".join(f"  {k}: {str(v).lower() if isinstance(v, bool) else v}\n" for k, v in handler.items())
    return f"{ONE_WORKER}maxBatchDelay: 5000\nhandler:\n  release_dir: {tmp_path}\n{settings}"


def test_a_handler_that_declares_a_batch_size_batches_without_configuration(tmp_path: Path, store: Path) -> None:
    make_archive(store, "declared", "declared_batch_handler.py", config_yaml=declared_config(tmp_path))
    with running_server(tmp_path, store, ["declared.mar"], extra_args=["--ncs"]) as server:
        assert describe_batch_size(server, "declared") == 4
        held, rest = held_then_four(server, "declared", tmp_path, "go")
        assert held["batch_size"] == 1, "a lone request on an idle worker goes at once"
        assert [r["batch_size"] for r in rest] == [4, 4, 4, 4]
        assert {r["body"] for r in rest} == {"r0", "r1", "r2", "r3"}, "each request got its own answer"
        assert held["announced"] == 4, "the handler's context says the batch size in use"


def test_a_configured_batch_size_wins_over_the_declared_one(tmp_path: Path, store: Path) -> None:
    make_archive(store, "pinned", "declared_batch_handler.py", config_yaml="batchSize: 1\n" + declared_config(tmp_path))
    with running_server(tmp_path, store, ["pinned.mar"], extra_args=["--ncs"]) as server:
        assert describe_batch_size(server, "pinned") == 1
        held, rest = held_then_four(server, "pinned", tmp_path, "go")
        assert [r["batch_size"] for r in rest] == [1, 1, 1, 1]
        assert held["announced"] == 1


def test_the_server_batch_size_setting_wins_over_the_declared_one(tmp_path: Path, store: Path) -> None:
    make_archive(store, "server_set", "declared_batch_handler.py", config_yaml=declared_config(tmp_path))
    with running_server(tmp_path, store, ["server_set.mar"], extra_args=["--ncs"], config="batch_size=2\n") as server:
        assert describe_batch_size(server, "server_set") == 2
        _, rest = held_then_four(server, "server_set", tmp_path, "go")
        assert [r["batch_size"] for r in rest] == [2, 2, 2, 2]


def test_custom_handlers_keep_batch_one(tmp_path: Path, store: Path) -> None:
    make_archive(store, "plain", "batch_handler.py", config_yaml=ONE_WORKER + "handler:\n  pause_s: 0.2\n")
    make_archive(store, "inherits", "inherited_batch_handler.py", config_yaml=ONE_WORKER)
    with running_server(tmp_path, store, ["plain.mar", "inherits.mar"], extra_args=["--ncs"]) as server:
        assert describe_batch_size(server, "plain") == 1
        assert describe_batch_size(server, "inherits") == 1, "an inherited declaration does not count"
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: server.predict("plain", b"x"), range(8)))
        assert [r.json()["batch_size"] for r in results] == [1] * 8
        assert server.predict("inherits", b"x").json() == {"batch_size": 1, "announced": 1}


def test_a_model_that_fails_on_default_batches_answers_every_request(tmp_path: Path, store: Path) -> None:
    record = tmp_path / "batches.txt"
    config = declared_config(tmp_path, fixed_batch=True, record_to=record)
    make_archive(store, "fixed", "declared_batch_handler.py", config_yaml=config)
    with running_server(tmp_path, store, ["fixed.mar"], extra_args=["--ncs"]) as server:
        _, rest = held_then_four(server, "fixed", tmp_path, "go")
        assert [r["body"] for r in rest] == ["r0", "r1", "r2", "r3"]
        assert record.read_text().split() == ["1", "4", "1", "1", "1", "1"], "the batch of 4 failed, then each alone"
        wait_for(lambda: "running one request at a time" in server.log_text(), 10, "the switch is logged")
        # from now on the worker runs requests one at a time: a batch of 4 never reaches the handler again
        _, again = held_then_four(server, "fixed", tmp_path, "again")
        assert [r["body"] for r in again] == ["r0", "r1", "r2", "r3"]
        assert record.read_text().split()[6:] == ["1"] * 5


def test_one_bad_request_in_a_default_batch_fails_alone(tmp_path: Path, store: Path) -> None:
    record = tmp_path / "batches.txt"
    make_archive(store, "mixed", "declared_batch_handler.py", config_yaml=declared_config(tmp_path, record_to=record))
    with running_server(tmp_path, store, ["mixed.mar"], extra_args=["--ncs"]) as server:
        with ThreadPoolExecutor(5) as pool:
            first = pool.submit(server.predict, "mixed", b"hold:go")
            wait_for(lambda: "BUSY" in server.manage("GET", "/models/mixed").text, 20, "the held batch is computing")
            rest = [pool.submit(server.predict, "mixed", body) for body in (b"a", b"broken", b"c", b"d")]
            (tmp_path / "go").touch()
            statuses = [f.result().status for f in rest]
            assert first.result().status == 200
        assert statuses == [200, 500, 200, 200], "the others get the answer they would have had alone"
        assert "running one request at a time" not in server.log_text(), "a bad request is no reason to stop batching"
        # batching goes on: the next four queued requests still form one batch
        _, again = held_then_four(server, "mixed", tmp_path, "again")
        assert [r["batch_size"] for r in again] == [4, 4, 4, 4]


def test_built_in_handlers_batch_unless_the_model_has_a_fixed_batch_dimension(tmp_path: Path, store: Path) -> None:
    work = tmp_path / "models"
    work.mkdir()
    fixed = work / "fixed.onnx"
    torch.onnx.export(models.Affine().eval(), (torch.zeros(1, 3),), str(fixed), input_names=["x"],
                      output_names=["y"], dynamo=False)  # fmt: skip
    make_archive(store, "dynamic", "tensor", serialized_file=models.affine_onnx(work / "dynamic.onnx"))
    make_archive(store, "fixed", "tensor", serialized_file=fixed)
    make_archive(store, "script", "tensor", serialized_file=models.affine_torchscript(work / "affine.pt"))
    with running_server(tmp_path, store, ["dynamic.mar", "fixed.mar", "script.mar"], extra_args=["--ncs"]) as server:
        assert describe_batch_size(server, "dynamic") == 8
        assert describe_batch_size(server, "script") == 8
        assert describe_batch_size(server, "fixed") == 1, "a fixed batch dimension cannot stack requests"
        config = call("GET", f"{server.inference}/v2/models/dynamic/config").json()
        assert config["max_batch_size"] == 8, "OIP model config reports the batch size in use"
