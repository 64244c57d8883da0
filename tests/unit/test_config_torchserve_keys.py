"""TorchServe keys in config.properties: models, model_snapshot, metrics_mode, load_models, gRPC; which file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from modelserve.config import ServerConfig, find_config_file, is_loopback, load_server_config, parse_address
from modelserve.errors import ConfigError
from tests.support.paths import REPO

# the example of TorchServe's configuration guide, continuation lines and all
MODELS_PROPERTIES = """\
models={\\
  "noop": {\\
    "1.0": {\\
        "defaultVersion": true,\\
        "marName": "noop.mar",\\
        "minWorkers": 1,\\
        "maxWorkers": 1,\\
        "batchSize": 4,\\
        "maxBatchDelay": 100,\\
        "responseTimeout": 120\\
    }\\
  },\\
  "vgg16": {\\
    "1.0": {\\
        "minWorkers": 1,\\
        "maxWorkers": 4,\\
        "batchSize": 8,\\
        "startupTimeout": 300\\
    }\\
  }\\
}
"""


def load(tmp_path: Path, text: str, overrides: dict[str, str] | None = None) -> ServerConfig:
    props = tmp_path / "config.properties"
    props.write_text(text)
    return load_server_config(props, {}, overrides or {})


def test_models_key_sets_each_version_below_its_model_config_yaml(tmp_path: Path) -> None:
    config = load(tmp_path, "default_workers_per_model=3\nbatch_size=2\n" + MODELS_PROPERTIES)
    noop = config.model_defaults("noop", "1.0")
    assert (noop.min_workers, noop.max_workers, noop.batch_size) == (1, 1, 4)
    assert (noop.max_batch_delay_ms, noop.response_timeout_s) == (100.0, 120.0)
    assert noop.raw == {}, "the handler's model_yaml_config is the archive's file only"
    vgg = config.model_defaults("vgg16", "1.0")
    assert (vgg.min_workers, vgg.max_workers, vgg.batch_size, vgg.startup_timeout_s) == (1, 4, 8, 300.0)
    assert config.models["noop"]["1.0"].default_version and config.models["noop"]["1.0"].mar_name == "noop.mar"
    other = config.model_defaults("noop", "2.0")
    assert (other.min_workers, other.batch_size) == (3, 2), "another version keeps the server defaults"
    from_yaml = noop.updated({"batchSize": 16, "minWorkers": 2}, "model-config.yaml")
    assert (from_yaml.batch_size, from_yaml.min_workers, from_yaml.max_workers) == (16, 2, 2)
    assert from_yaml.max_batch_delay_ms == 100.0, "what the yaml does not set stays from the models key"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('{"noop": {"1.0": {"batchSize": 4}', "not valid JSON"),
        ('["noop"]', "JSON object of model names"),
        ('{"noop": ["1.0"]}', "model 'noop': expected a JSON object of versions"),
        ('{"noop": {"1.0": 4}}', "version '1.0': expected a JSON object of settings"),
        ('{"noop": {"1.0": {"batchSize": "four"}}}', 'batchSize: expected an integer, got "four"'),
        ('{"noop": {"1.0": {"minWorkers": true}}}', "minWorkers: expected an integer, got true"),
        ('{"noop": {"1.0": {"batchSize": 0}}}', "batchSize: must be at least 1"),
        ('{"noop": {"1.0": {"maxBatchDelay": 2.5}}}', "maxBatchDelay: expected an integer, got 2.5"),
        ('{"noop": {"1.0": {"defaultVersion": "yes"}}}', "defaultVersion: expected true or false"),
        ('{"noop": {"1.0": {"marName": 7}}}', "marName: expected an archive file name"),
        ('{"noop": {"1.0": {"runtimeType": "LSP"}}}', "runtimeType: modelserve runs Python handlers only"),
        ('{"noop": {"1.0": {"minWorkers": 3, "maxWorkers": 1}}}', r"maxWorkers \(1\) < minWorkers \(3\)"),
    ],
)
def test_models_key_errors_name_the_key_and_the_problem(tmp_path: Path, value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=r"config\.properties: invalid value for models: .*" + expected):
        load(tmp_path, f"models={value}\n")


def test_models_key_takes_numbers_written_as_strings_like_torchserve(tmp_path: Path) -> None:
    config = load(tmp_path, 'models={"m": {"1.0": {"batchSize": "4", "defaultVersion": "true"}}}\n')
    assert config.model_defaults("m", "1.0").batch_size == 4
    assert config.models["m"]["1.0"].default_version


def test_models_key_warns_about_an_unknown_setting(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "modelserve.config"):
        config = load(tmp_path, 'models={"m": {"1.0": {"batchSize": 2, "bachSize": 4}}}\n')
    assert "model 'm' version '1.0': unknown key 'bachSize' ignored" in caplog.text
    assert config.model_defaults("m", "1.0").batch_size == 2


SNAPSHOT = (
    'model_snapshot={"name": "20240101000000000-shutdown.cfg", "modelCount": 2, "created": 1704067200000, '
    '"models": {"mnist": {"1.0": {"defaultVersion": true, "marName": "mnist.mar", "minWorkers": 1, '
    '"maxWorkers": 2, "batchSize": 4, "maxBatchDelay": 50, "responseTimeout": 60, "startupTimeout": 90, '
    '"runtimeType": "python"}, "2.0": {"defaultVersion": false, "marName": "mnist-2.mar", "minWorkers": 0, '
    '"maxWorkers": 0, "batchSize": 1, "maxBatchDelay": 100, "parallelLevel": 1}}}}\n'
)


def test_torchserve_model_snapshot_json_becomes_the_snapshot_to_restore(tmp_path: Path) -> None:
    config = load(tmp_path, SNAPSHOT, {"model_snapshot": "false"})
    assert config.model_snapshot is False, "--ncs still turns modelserve's own snapshots off"
    assert config.snapshot_to_restore == {
        "modelCount": 2,
        "models": {
            "mnist": {
                "1.0": {"url": "mnist.mar", "defaultVersion": True, "minWorkers": 1, "maxWorkers": 2, "batchSize": 4,
                        "maxBatchDelay": 50, "responseTimeout": 60, "startupTimeout": 90},
                "2.0": {"url": "mnist-2.mar", "defaultVersion": False, "minWorkers": 0, "maxWorkers": 0,
                        "batchSize": 1, "maxBatchDelay": 100},
            }
        },
    }  # fmt: skip
    assert load(tmp_path, "model_snapshot=true\n").snapshot_to_restore is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('{"models": {"m": {"1.0": {"minWorkers": 1}}}}', "model 'm' version '1.0' has no marName"),
        ('{"models": {"m": {"1.0": {"marName": "m.mar", "batchSize": -1}}}}', "batchSize: must be at least 1"),
        ("{not json", "not valid JSON"),
        ("sometimes", "expected true or false"),
    ],
)
def test_bad_model_snapshot_is_refused_naming_the_key(tmp_path: Path, value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="invalid value for model_snapshot: .*" + expected):
        load(tmp_path, f"model_snapshot={value}\n")


def test_metrics_mode_log_is_accepted_with_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "modelserve.config"):
        config = load(tmp_path, "metrics_mode=log\n")
    warnings = [r.getMessage() for r in caplog.records if "metrics_mode" in r.getMessage()]
    assert len(warnings) == 1
    assert "Prometheus" in warnings[0] and "/metrics" in warnings[0] and "127.0.0.1:8082" in warnings[0]
    assert config.metrics_mode == "log"
    caplog.clear()
    with caplog.at_level(logging.WARNING, "modelserve.config"):
        assert load(tmp_path, "metrics_mode = Prometheus\n").metrics_mode == "prometheus"
    assert caplog.text == ""
    with pytest.raises(ConfigError, match="metrics_mode: expected one of log, prometheus"):
        load(tmp_path, "metrics_mode=statsd\n")


def test_grpc_keys_are_read_as_torchserve_names_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    grpc = {
        "grpc_inference_port": "7075",
        "grpc_management_port": "7076",
        "grpc_inference_address": "::1",
        "grpc_management_address": "localhost",
        "grpc_inference_max_connection_age_ms": "60000",
        "grpc_management_max_connection_age_ms": "60000",
        "grpc_inference_max_connection_age_grace_ms": "5000",
        "grpc_management_max_connection_age_grace_ms": "5000",
        "enable_grpc_ssl": "false",
        "enable_grpc": "true",
    }
    with caplog.at_level(logging.WARNING, "modelserve.config"):
        config = load(tmp_path, "".join(f"{key}={value}\n" for key, value in grpc.items()))
    assert caplog.text == ""
    assert (config.grpc_inference_port, config.grpc_management_port) == (7075, 7076)
    assert (config.grpc_inference_address, config.grpc_management_address) == ("::1", "localhost")
    assert config.grpc_inference_max_connection_age_ms == 60000 and config.grpc_enabled()
    assert not load(tmp_path, "enable_grpc=false\n").grpc_enabled()
    defaults = load(tmp_path, "")
    assert (defaults.grpc_inference_address, defaults.grpc_inference_port) == ("127.0.0.1", 7070)
    assert (defaults.grpc_management_address, defaults.grpc_management_port) == ("127.0.0.1", 7071)
    assert defaults.enable_grpc is None and defaults.grpc_enabled()  # grpcio is installed here


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("enable_grpc_ssl=true\n", "plaintext only"),
        ("grpc_inference_port=70000\n", "grpc_inference_port"),
        ("grpc_inference_address=http://127.0.0.1:7070\n", "host name or IP address"),
        ("disable_token_authorization=true\ngrpc_management_address=0.0.0.0\n", "gRPC management API"),
    ],
)
def test_grpc_settings_that_cannot_be_served_stop_the_start(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load(tmp_path, text)


def test_grpc_ssl_asks_for_nothing_when_grpc_is_off(tmp_path: Path) -> None:
    assert not load(tmp_path, "enable_grpc=false\nenable_grpc_ssl=true\n").grpc_enabled()


def test_load_models_reads_like_the_models_flag(tmp_path: Path) -> None:
    assert load(tmp_path, "load_models=a=a.mar, b.mar\n").load_models == ["a=a.mar", "b.mar"]
    assert load(tmp_path, "load_models=ALL\n").load_models == ["all"]
    assert load(tmp_path, "load_models=all\n", {"load_models": "c.mar"}).load_models == ["c.mar"]


def test_config_file_is_the_flag_then_ts_config_file_then_the_working_directory(tmp_path: Path) -> None:
    flag, from_env = tmp_path / "flag.properties", tmp_path / "env.properties"
    env = {"TS_CONFIG_FILE": str(from_env)}
    assert find_config_file(flag, env, tmp_path) == flag
    assert find_config_file(None, env, tmp_path) == from_env
    assert find_config_file(None, {}, tmp_path) is None, "no config.properties here: built-in defaults"
    (tmp_path / "config.properties").write_text("")
    assert find_config_file(None, {}, tmp_path) == tmp_path / "config.properties"
    assert find_config_file(None, {"TS_CONFIG_FILE": " "}, tmp_path) == tmp_path / "config.properties"


def test_repository_config_properties_is_valid_and_loopback_only(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "modelserve.config"):
        config = load_server_config(REPO / "config.properties", {}, {})
    assert caplog.text == "", "every key in it is one modelserve uses"
    for address in (config.inference_address, config.management_address, config.metrics_address):
        host, _ = parse_address(address)
        assert is_loopback(host), address
    assert not config.disable_token_authorization and not config.enable_model_api


def test_grpc_is_off_without_grpcio_unless_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import modelserve.config as config_module

    monkeypatch.setattr(config_module, "grpc_available", lambda: False)
    assert not load(tmp_path, "").grpc_enabled()
    with pytest.raises(ConfigError, match="grpcio is not installed"):
        load(tmp_path, "enable_grpc=true\n")
