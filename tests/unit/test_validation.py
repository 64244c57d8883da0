"""The shared input rules (modelserve.validation) and the bounded model-config.yaml parser."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from modelserve.archive.errors import ManifestError
from modelserve.archive.manifest import Manifest
from modelserve.config import MAX_MODEL_YAML_BYTES, ModelConfig, ServerConfig, parse_model_yaml
from modelserve.errors import ConfigError
from modelserve.model_settings import parse_models
from modelserve.validation import (
    InvalidValueError,
    check_handler,
    check_name,
    parse_float,
    parse_int,
    parse_memory,
)

BILLION_LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)


@pytest.mark.parametrize("name", ["mnist", "resnet-18", "a.b_c", "X1"])
def test_names_of_the_archivers_form_are_accepted(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["a/b", "../../etc", "ab\u202ecd", "ok\nforged line", "", ".hidden", "a b", "x" * 256])
def test_names_outside_the_archivers_regex_are_refused_naming_the_field(name: str) -> None:
    with pytest.raises(InvalidValueError, match="invalid model_name") as caught:
        check_name(name)
    assert "\n" not in str(caught.value) and "\u202e" not in str(caught.value)  # shown escaped, never as itself


@pytest.mark.parametrize("raw", ["\uff11\uff12", "1e309", "2.5", "12abc", "0x10", True, 2.5, None])
def test_integers_must_be_ascii_digits(raw: object) -> None:
    with pytest.raises(InvalidValueError, match="batch_size: expected an integer"):
        parse_int(raw, "batch_size", 1, 4096)


def test_integers_out_of_range_are_refused_with_the_bound() -> None:
    with pytest.raises(InvalidValueError, match="must be at most 4096, got 1000000000"):
        parse_int("1000000000", "batch_size", 1, 4096)
    with pytest.raises(InvalidValueError, match="must be at least 1, got 0"):
        parse_int(0, "batch_size", 1, 4096)
    assert parse_int(" 12 ", "batch_size", 1, 4096) == 12


@pytest.mark.parametrize("raw", ["inf", "nan", "1e309", "-inf", float("inf"), float("nan"), 1e309, "\uff11"])
def test_numbers_must_be_finite(raw: object) -> None:
    with pytest.raises(InvalidValueError, match="delay: expected a"):
        parse_float(raw, "delay", 0, 3600)


def test_finite_numbers_in_range_are_accepted() -> None:
    assert parse_float("1.5", "delay", 0, 10) == 1.5
    assert parse_float(2, "delay", 0, 10) == 2.0
    with pytest.raises(InvalidValueError, match="at most 10"):
        parse_float("1e3", "delay", 0, 10)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("512MB", 512_000_000), ("512MiB", 512 << 20), ("1g", 1 << 30), ("1.5 GiB", 3 << 29), (4096, 4096)],
)
def test_memory_sizes_take_units(raw: object, expected: int) -> None:
    assert parse_memory(raw, "workerMemoryLimit") == expected


@pytest.mark.parametrize("raw", ["lots", "-1MB", 0, True, "12 parsecs", 1 << 60])
def test_memory_sizes_that_mean_nothing_are_refused(raw: object) -> None:
    with pytest.raises(InvalidValueError, match="workerMemoryLimit"):
        parse_memory(raw, "workerMemoryLimit")


@pytest.fixture
def archive_root(tmp_path: Path) -> Path:
    root = tmp_path / "archive"
    (root / "sub").mkdir(parents=True)
    (root / "handler.py").write_text("def handle(data, context): return data\n")
    (root / "sub" / "h.py").write_text("")
    (tmp_path / "outside.py").write_text("")
    (root / "link.py").symlink_to(tmp_path / "outside.py")
    return root


@pytest.mark.parametrize(
    "handler", ["handler.py", "handler.py:handle", "sub/h.py", "image_classifier", "invalidHandler", "h:handle"]
)
def test_handlers_inside_the_archive_or_bare_names_are_accepted(archive_root: Path, handler: str) -> None:
    assert check_handler(handler, archive_root) == handler


@pytest.mark.parametrize(
    "handler",
    ["/etc/passwd.py", "../outside.py", "sub/../../outside.py", "link.py", "missing.py", "handler.py:bad-name",
     "a\\b.py", "my.module", "sub//h.py"],
)  # fmt: skip
def test_handlers_from_elsewhere_on_disk_are_refused(archive_root: Path, handler: str) -> None:
    with pytest.raises(InvalidValueError, match="invalid handler"):
        check_handler(handler, archive_root)


def test_yaml_with_aliases_is_refused_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError, match="anchors and aliases"):
        parse_model_yaml(BILLION_LAUGHS, "model-config.yaml")
    assert time.monotonic() - started < 1.0
    with pytest.raises(ConfigError, match="anchors and aliases"):
        parse_model_yaml("base: &b {batchSize: 2}\nother:\n  <<: *b\n", "model-config.yaml")


def test_yaml_over_the_size_node_or_depth_limit_is_refused() -> None:
    with pytest.raises(ConfigError, match="larger than"):
        parse_model_yaml("a: " + "x" * MAX_MODEL_YAML_BYTES, "model-config.yaml")
    with pytest.raises(ConfigError, match="more than 10000 values"):
        parse_model_yaml("a: [" + ",".join(["1"] * 10_001) + "]", "model-config.yaml")
    with pytest.raises(ConfigError, match="nested deeper"):
        parse_model_yaml("a: " + "[" * 40 + "]" * 40, "model-config.yaml")


def test_plain_yaml_still_parses() -> None:
    text = "minWorkers: 1\nbatchSize: 4\nhandler:\n  labels: [a, b]\n  nested: {x: 1}\n"
    assert parse_model_yaml(text, "model-config.yaml") == {
        "minWorkers": 1, "batchSize": 4, "handler": {"labels": ["a", "b"], "nested": {"x": 1}},
    }  # fmt: skip
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_model_yaml("!!python/object/apply:os.system ['true']", "model-config.yaml")


def test_manifest_version_with_path_parts_is_refused_naming_the_field() -> None:
    data = {"model": {"modelName": "m", "handler": "h.py", "modelVersion": "../../x/y"}}
    with pytest.raises(ManifestError, match=r"model\.modelVersion"):
        Manifest.from_dict(data)
    data["model"]["modelVersion"] = "2.0-rc1"
    assert Manifest.from_dict(data).model_version == "2.0-rc1"


def _model_config() -> ModelConfig:
    return ModelConfig.defaults(ServerConfig())


@pytest.mark.parametrize(
    ("values", "expected"),
    [({"maxBatchDelay": 1e309}, "maxBatchDelay: expected a finite number"),
     ({"maxBatchDelay": "inf"}, "maxBatchDelay: expected a number"),
     ({"batchSize": 10**9}, "batchSize: must be at most 4096"),
     ({"batchSize": "\uff11\uff12"}, "batchSize: expected an integer in ASCII digits"),
     ({"responseTimeout": float("nan")}, "responseTimeout: expected a finite number"),
     ({"workerMemoryLimit": "a lot"}, "workerMemoryLimit: expected a size")],
)  # fmt: skip
def test_model_config_numbers_follow_the_shared_rules(values: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        _model_config().updated(values, "model-config.yaml")


def test_worker_memory_limit_is_read_in_bytes() -> None:
    assert _model_config().updated({"workerMemoryLimit": "512MB"}, "x").worker_memory_limit_bytes == 512_000_000
    assert _model_config().worker_memory_limit_bytes == 0


def test_models_key_refuses_bad_names_and_full_width_numbers() -> None:
    with pytest.raises(ValueError, match="invalid models: model name"):
        parse_models('{"a/b": {"1.0": {}}}')
    with pytest.raises(ValueError, match="version"):
        parse_models('{"ok": {"../x": {}}}')
    with pytest.raises(ValueError, match="batchSize: expected an integer in ASCII digits"):
        parse_models('{"ok": {"1.0": {"batchSize": "\uff11\uff12"}}}')


def test_server_settings_refuse_non_ascii_and_non_finite_numbers() -> None:
    config = ServerConfig()
    with pytest.raises(ConfigError, match="batch_size"):
        config.apply({"batch_size": "\uff11\uff12"}, "config.properties")
    with pytest.raises(ConfigError, match="max_batch_delay"):
        config.apply({"max_batch_delay": "inf"}, "config.properties")


def test_worker_cap_defaults_to_cores_and_memory_and_can_be_set() -> None:
    import os

    config = ServerConfig()
    cores = len(os.sched_getaffinity(0))
    assert 1 <= config.worker_cap() <= 32 * cores
    config.apply({"max_workers_total": "7"}, "config.properties")
    assert config.worker_cap() == 7
