"""Start-up models configured the TorchServe way: load_models, the models key, a model_snapshot JSON."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.server import make_archive, running_server

NO_WORKERS = "minWorkers: 0\nmaxWorkers: 0\n"


def test_startup_models_take_load_models_the_models_key_and_a_torchserve_snapshot(tmp_path: Path, store: Path) -> None:
    make_archive(store, "tuned", "echo_handler.py", config_yaml=NO_WORKERS + "batchSize: 8\n")
    make_archive(store, "multi", "echo_handler.py", version="1.0", config_yaml=NO_WORKERS)
    make_archive(store, "multi", "echo_handler.py", version="2.0", config_yaml=NO_WORKERS)
    make_archive(store, "restored", "echo_handler.py", config_yaml=NO_WORKERS)
    make_archive(store, "unnamed", "echo_handler.py", config_yaml=NO_WORKERS)
    models = {
        # model-config.yaml sets batchSize 8, which wins; the rest comes from here
        "tuned": {"1.0": {"batchSize": 4, "maxBatchDelay": 7, "responseTimeout": 33, "startupTimeout": 44}},
        "multi": {"2.0": {"defaultVersion": True}},
    }
    config = (
        "load_models=tuned.mar,multi.mar,multi-2.0.mar\n"
        f"models={json.dumps(models)}\n"
        # as TorchServe 0.12 writes it into logs/config/*-snapshot.cfg: properties escapes, one line
        r'model_snapshot={\n  "name"\: "20261202004920040-shutdown.cfg",\n  "modelCount"\: 1,\n  "created"\: '
        r'1796172560040,\n  "models"\: {\n    "restored"\: {\n      "1.0"\: {\n        "defaultVersion"\: true,\n  '
        r'      "marName"\: "restored.mar",\n        "minWorkers"\: 0,\n        "maxWorkers"\: 0,\n        '
        r'"batchSize"\: 3,\n        "maxBatchDelay"\: 9,\n        "responseTimeout"\: 11,\n        '
        r'"startupTimeout"\: 120,\n        "runtimeType"\: "python"\n      }\n    }\n  }\n}' + "\n"
    )
    with running_server(tmp_path, store, [], config=config) as server:
        tuned = server.manage("GET", "/models/tuned").json()[0]
        assert (tuned["batchSize"], tuned["maxBatchDelay"]) == (8, 7.0)
        assert (tuned["responseTimeout"], tuned["startupTimeout"]) == (33.0, 44.0)
        assert server.manage("GET", "/models/multi").json()[0]["modelVersion"] == "2.0", "defaultVersion"
        restored = server.manage("GET", "/models/restored").json()[0]
        assert (restored["batchSize"], restored["maxBatchDelay"], restored["responseTimeout"]) == (3, 9.0, 11.0)
        listed = {m["modelName"] for m in server.manage("GET", "/models").json()["models"]}
        assert listed == {"tuned", "multi", "restored"}, "load_models and the snapshot, nothing else from the store"
        assert "restoring 1 model versions from model_snapshot in the configuration" in server.log_text()


def test_models_flag_replaces_load_models_and_unused_settings_are_reported(tmp_path: Path, store: Path) -> None:
    make_archive(store, "tuned", "echo_handler.py", config_yaml=NO_WORKERS)
    make_archive(store, "other", "echo_handler.py", config_yaml=NO_WORKERS)
    config = 'load_models=other.mar\nmodels={"tuned": {"1.0": {"batchSize": 5}}, "typo": {"1.0": {"batchSize": 2}}}\n'
    with running_server(tmp_path, store, ["tuned=tuned.mar"], config=config) as server:
        listed = {m["modelName"] for m in server.manage("GET", "/models").json()["models"]}
        assert listed == {"tuned"}
        assert server.manage("GET", "/models/tuned").json()[0]["batchSize"] == 5
        assert "model typo version 1.0 was not loaded at start-up; its settings are unused" in server.log_text()
