"""Every route of the three ports under schemathesis, from our own OpenAPI documents: no 5xx, no crash."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.paths import script
from tests.support.server import call, make_archive, running_server


@pytest.mark.slow
def test_no_route_answers_5xx_to_generated_requests(tmp_path: Path, store: Path) -> None:
    make_archive(store, "echo", "echo_handler.py", config_yaml="minWorkers: 1\n")
    make_archive(store, "batchy", "batch_handler.py", config_yaml="minWorkers: 1\n")
    with running_server(
        tmp_path, store, ["echo.mar", "batchy.mar"], extra_args=["--ncs", "--enable-model-api"]
    ) as server:
        auth = ["-H", f"Authorization: Bearer {server.token}"]
        for base, headers in ((server.inference, []), (server.management, auth), (server.metrics, [])):  # fmt: skip
            result = subprocess.run(
                [script("st"), "run", f"{base}/api-description", "--url", base, "-c", "not_a_server_error",
                 "-n", "10", "--request-timeout", "20", "--seed", "1", *headers],
                capture_output=True, text=True, timeout=240, check=False,
            )  # fmt: skip
            assert result.returncode == 0, result.stdout[-4000:]
            assert " passed" in result.stdout
        assert call("GET", server.inference + "/v2/health/live").status == 200
        assert server.process is not None and server.process.poll() is None, "the server survived"
