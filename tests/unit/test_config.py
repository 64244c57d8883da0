"""Configuration: Java properties syntax, precedence, validation, model-config.yaml safety."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from modelserve.config import ModelConfig, ServerConfig, load_server_config, parse_model_yaml, setting_names
from modelserve.errors import ConfigError
from modelserve.properties import parse_properties


def test_properties_syntax() -> None:
    text = (
        "# comment\n! also a comment\n  inference_address = http://127.0.0.1:9000\nkey:value\nspaced value here\n"
        "long = first \\\n    second\nescaped = a\\tb\\u0041\nempty=\n"
    )
    assert parse_properties(text) == {
        "inference_address": "http://127.0.0.1:9000",
        "key": "value",
        "spaced": "value here",
        "long": "first second",
        "escaped": "a\tbA",
        "empty": "",
    }


def test_precedence_file_then_environment_then_command_line(tmp_path: Path) -> None:
    props = tmp_path / "config.properties"
    props.write_text("job_queue_size=10\nbatch_size=2\nmax_batch_delay=50\n")
    env = {"MODELSERVE_JOB_QUEUE_SIZE": "20", "MODELSERVE_BATCH_SIZE": "4"}
    config = load_server_config(props, env, {"batch_size": "8"})
    assert (config.job_queue_size, config.batch_size, config.max_batch_delay) == (20, 8, 50.0)


def test_defaults_are_safe() -> None:
    config = ServerConfig()
    assert config.inference_address == "http://127.0.0.1:8080"
    assert config.management_address == "http://127.0.0.1:8081"
    assert config.metrics_address == "http://127.0.0.1:8082"
    assert not config.enable_model_api and not config.disable_token_authorization and config.allowed_urls == []
    assert config.max_request_size == config.max_response_size == 6553500


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("job_queue_size=-1", "job_queue_size"),
        ("job_queue_size=lots", "job_queue_size"),
        ("enable_model_api=maybe", "enable_model_api"),
        ("inference_address=https://127.0.0.1:8443", "inference_address"),
        ("inference_address=127.0.0.1:8080", "inference_address"),
        ("log_format=xml", "log_format"),
    ],
)
def test_invalid_values_are_rejected_naming_the_key(tmp_path: Path, line: str, key: str) -> None:
    props = tmp_path / "c.properties"
    props.write_text(line + "\n")
    with pytest.raises(ConfigError, match=key):
        load_server_config(props, {}, {})


def test_unknown_keys_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    props = tmp_path / "c.properties"
    props.write_text("no_such_key=1\nnumber_of_netty_threads=4\n")
    with caplog.at_level(logging.WARNING, "modelserve.config"):
        load_server_config(props, {}, {})
    assert "unknown configuration key 'no_such_key'" in caplog.text
    assert "'number_of_netty_threads' is not used" in caplog.text


def test_tokens_off_requires_loopback_management() -> None:
    with pytest.raises(ConfigError, match="non-loopback"):
        load_server_config(
            None, {}, {"management_address": "http://0.0.0.0:8081", "disable_token_authorization": "true"}
        )


def test_every_setting_has_a_parser() -> None:
    import dataclasses

    assert setting_names() == {f.name for f in dataclasses.fields(ServerConfig)}


def test_model_config_layers_and_validation() -> None:
    base = ModelConfig.defaults(ServerConfig(default_workers_per_model=2))
    updated = base.updated({"batchSize": 8, "maxBatchDelay": 5, "minWorkers": 3, "handler": {"topk": 1}}, "test")
    assert (updated.batch_size, updated.max_batch_delay_ms, updated.min_workers, updated.max_workers) == (8, 5.0, 3, 3)
    assert updated.handler == {"topk": 1}
    with pytest.raises(ConfigError, match="batchSize"):
        base.updated({"batchSize": 0}, "test")
    with pytest.raises(ConfigError, match="maxWorkers"):
        base.updated({"minWorkers": 4, "maxWorkers": 1}, "test")
    with pytest.raises(ConfigError, match="deviceType"):
        base.updated({"deviceType": "tpu"}, "test")
    assert base.optimize is True
    assert base.updated({"optimize": "False"}, "test").optimize is False
    with pytest.raises(ConfigError, match=r"optimize.*true or false"):
        base.updated({"optimize": "sometimes"}, "test")


def test_model_yaml_refuses_python_object_tags(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    evil = f"batchSize: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_model_yaml(evil, "model-config.yaml")
    assert not marker.exists()
    with pytest.raises(ConfigError, match="mapping"):
        parse_model_yaml("- a\n- b\n", "model-config.yaml")
