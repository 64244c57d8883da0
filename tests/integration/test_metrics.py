"""/metrics tells exact numbers: requests by status, histograms, handler metrics, restarts; plus the access log."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import ServerProcess, call, make_archive, running_server, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("metrics")
    store = root / "model_store"
    store.mkdir()
    make_archive(store, "outcome", "outcome_handler.py", config_yaml="minWorkers: 1\n")
    make_archive(store, "batchy", "batch_handler.py", config_yaml="minWorkers: 1\n")
    make_archive(store, "crashy", "crash_handler.py", config_yaml="minWorkers: 1\n")
    models = ["outcome.mar", "batchy.mar", "crashy.mar"]
    with running_server(root, store, models, extra_args=["--ncs", "--enable-model-api"]) as running:
        yield running


def scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = call("GET", server.metrics + "/metrics")
    assert response.status == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def labels(model: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"model_name": model, "model_version": "1.0", **extra}.items()))


def test_request_counters_and_histograms_are_exact(server: ServerProcess) -> None:
    for body, count in ((b"fine", 5), (b"400", 3), (b"500", 2)):
        for _ in range(count):
            server.predict("outcome", body)
    assert server.manage("PUT", "/models/outcome?min_worker=0&synchronous=true").status == 200
    for _ in range(4):
        response = server.predict("outcome", b"fine")
        assert response.status == 503
    samples = scrape(server)
    for status, count in (("200", 5), ("400", 3), ("500", 2), ("503", 4)):
        assert samples[("modelserve_requests_total", labels("outcome", status=status))] == count
    assert samples[("modelserve_request_duration_seconds_count", labels("outcome"))] == 14
    # only the 10 requests that reached a worker waited in the queue and went out in a batch
    assert samples[("modelserve_queue_wait_seconds_count", labels("outcome"))] == 10
    assert samples[("modelserve_batch_size_count", labels("outcome"))] == 10
    assert samples[("modelserve_batch_size_bucket", labels("outcome", le="1.0"))] == 10
    assert samples[("modelserve_handler_duration_seconds_count", labels("outcome", step="handler"))] == 10
    assert samples[("modelserve_workers_live", labels("outcome"))] == 0
    assert samples[("modelserve_queue_depth", labels("outcome"))] == 0
    assert server.manage("PUT", "/models/outcome?min_worker=1&synchronous=true").status == 200


def test_handler_metrics_reach_prometheus(server: ServerProcess) -> None:
    for _ in range(3):
        assert server.predict("outcome", b"fine").status == 200
    samples = scrape(server)
    assert samples[("modelserve_handler_widgets_total", labels("outcome", color="red"))] >= 6
    assert samples[("modelserve_handler_temperature", labels("outcome"))] == 21.5
    before = samples.get(("modelserve_handler_batches_total", labels("batchy", kind="test")), 0.0)
    for _ in range(4):
        server.predict("batchy", b"x")
    after = scrape(server)
    assert after[("modelserve_handler_batches_total", labels("batchy", kind="test"))] == before + 4
    assert after[("modelserve_handler_batch_items_count", labels("batchy"))] >= 4


def test_worker_restarts_and_rss_are_reported(server: ServerProcess) -> None:
    response = server.predict("crashy", b"crash")
    assert response.status == 500
    wait_for(lambda: scrape(server).get(("modelserve_workers_live", labels("crashy"))) == 1, 30, "replacement")
    samples = scrape(server)
    assert samples[("modelserve_worker_restarts_total", labels("crashy"))] == 1
    rss = [
        v
        for (name, lab), v in samples.items()
        if name == "modelserve_worker_rss_bytes" and ("model_name", "crashy") in lab
    ]
    assert len(rss) == 1 and rss[0] > 1_000_000


def test_system_metrics_are_present(server: ServerProcess) -> None:
    samples = scrape(server)
    names = {name for name, _ in samples}
    for name in ("modelserve_system_cpu_utilization_ratio", "modelserve_system_memory_used_bytes",
                 "modelserve_system_memory_available_bytes", "modelserve_system_disk_free_bytes",
                 "modelserve_system_disk_used_bytes"):  # fmt: skip
        assert name in names
    assert 0.0 <= samples[("modelserve_system_cpu_utilization_ratio", ())] <= 1.0


def test_metrics_route_accepts_a_trailing_slash(server: ServerProcess) -> None:
    response = call("GET", f"{server.metrics}/metrics/")
    assert response.status == 200 and b"modelserve_uptime_seconds" in response.body


def test_unregistered_model_leaves_no_stale_series(server: ServerProcess) -> None:
    server.predict("batchy", b"x")
    assert any(lab == labels("batchy") for _, lab in scrape(server))
    assert server.manage("DELETE", "/models/batchy").status == 200
    assert not any(("model_name", "batchy") in lab for _, lab in scrape(server))


def test_access_log_has_one_line_per_request_with_its_id(server: ServerProcess) -> None:
    ids = []
    for body in (b"fine", b"400", b"500"):
        response = server.predict("outcome", body)
        ids.append((response.headers["x-request-id"], response.status))
    mine = server.predict("outcome", b"fine", {"x-request-id": "client-chosen-id"})
    assert mine.headers["x-request-id"] == "client-chosen-id"
    ids.append(("client-chosen-id", 200))

    def logged() -> bool:
        text = server.log_text()
        return all(request_id in text for request_id, _ in ids)

    wait_for(logged, 5, "access log lines")
    for request_id, status in ids:
        lines = [line for line in server.lines if "modelserve.access" in line and request_id in line]
        assert len(lines) == 1, lines
        assert re.search(rf"{request_id} outcome 1\.0 POST {status} [0-9.]+ms", lines[0])
    assert re.search(r"\[outcome:1\.0:\d+\] handling 1 request", server.log_text()), "worker output is prefixed"
    # a line of the worker's own logging keeps its level in the server log instead of becoming a warning
    assert re.search(r"INFO modelserve\.worker: \[outcome:1\.0:\d+\] outcome: logged through", server.log_text())


def test_json_log_format(tmp_path: Path, store: Path) -> None:
    make_archive(store, "echo", "echo_handler.py", config_yaml="minWorkers: 1\n")
    with running_server(tmp_path, store, ["echo.mar"], extra_args=["--ncs"], config="log_format=json\n") as server:
        response = server.predict("echo", b"x")
        request_id = response.headers["x-request-id"]
        wait_for(lambda: request_id in server.log_text(), 5, "access line")
    records = [json.loads(line) for line in server.lines if line.startswith("{")]
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any(r["logger"] == "modelserve.access" and request_id in r["message"] for r in records)


def test_log_config_file_is_honoured(tmp_path: Path, store: Path) -> None:
    log_file = tmp_path / "custom.log"
    (tmp_path / "logging.yaml").write_text(
        "version: 1\nformatters:\n  short:\n    format: 'CUSTOM %(name)s %(message)s'\n"
        f"handlers:\n  file:\n    class: logging.FileHandler\n    filename: {log_file}\n    formatter: short\n"
        "  out:\n    class: logging.StreamHandler\n    stream: ext://sys.stdout\n    formatter: short\n"
        "root:\n  level: INFO\n  handlers: [file, out]\n"
    )
    with running_server(tmp_path, store, [], extra_args=["--ncs", "--log-config", "logging.yaml"]) as server:
        assert server.inference
        assert all(line.startswith("CUSTOM ") for line in server.lines if line.strip())
    assert "CUSTOM modelserve Inference API bound to" in log_file.read_text()
