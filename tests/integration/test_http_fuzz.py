"""Every route of the three ports under schemathesis, from our own OpenAPI documents: no 5xx, no crash.

Each port gets every phase (coverage, fuzzing, stateful) with generated values; the management port gets a second,
stateful run whose registrations can succeed (an archive of the store, valid names from a small dictionary), so the
document's links (register -> describe / scale / unregister, describe -> one version's routes) are followed.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.paths import script
from tests.support.server import ServerProcess, call, make_archive, running_server


def names_config(names: list[str]) -> str:
    """Path names from ``names`` half of the time; the other half stays generated."""
    return f"""\
[dictionaries.names]
values = {names!r}

[parameters]
"path.name" = {{ dictionary = "names", probability = 0.5 }}
"""


SERVED = names_config(["echo", "batchy"])
# the management runs may unregister what they name: their own names, never the served models
ANY_PORT = names_config(["fuzz-a", "fuzz-b", "fuzz-c"])
# registrations that can succeed: only the name varies, and it is one the other routes are also given
WORKFLOW = (
    ANY_PORT
    + """
[[operations]]
include-name = "POST /models"
parameters = { "query.url" = "echo.mar", "query.initial_workers" = 0, "query.synchronous" = true, \
"query.batch_size" = 1, "query.max_batch_delay" = 50, "query.response_timeout" = 60, "query.startup_timeout" = 60, \
"query.handler" = "echo_handler.py", "query.runtime" = "python", "query.model_name" = { dictionary = "names" } }
"""
)
TOTAL_BUDGET_S = 90


def run_schemathesis(server: ServerProcess, base: str, config_file: Path, headers: list[str], *extra: str) -> str:
    result = subprocess.run(
        [script("st"), "--config-file", str(config_file), "run", f"{base}/api-description", "--url", base,
         "-c", "not_a_server_error", "-n", "10", "--request-timeout", "20", "--seed", "1", *headers, *extra],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:]
    assert " passed" in result.stdout
    assert server.process is not None and server.process.poll() is None, "the server survived"
    return result.stdout


@pytest.mark.slow
def test_no_route_answers_5xx_to_generated_requests(tmp_path: Path, store: Path) -> None:
    started = time.monotonic()
    make_archive(store, "echo", "echo_handler.py", config_yaml="minWorkers: 1\n")
    make_archive(store, "batchy", "batch_handler.py", config_yaml="minWorkers: 1\n")
    served = tmp_path / "served.toml"
    served.write_text(SERVED)
    any_port = tmp_path / "any-port.toml"
    any_port.write_text(ANY_PORT)
    workflow = tmp_path / "workflow.toml"
    workflow.write_text(WORKFLOW)
    # scaling requests ask for any number of workers: the cap keeps the machine usable and answers 400 past it
    config = "max_workers_total=6\n"
    with running_server(
        tmp_path, store, ["echo.mar", "batchy.mar"], extra_args=["--ncs", "--enable-model-api"], config=config
    ) as server:
        auth = ["-H", f"Authorization: Bearer {server.token}"]
        for base, config_file, headers in (
            (server.inference, served, []), (server.management, any_port, auth), (server.metrics, any_port, []),
        ):  # fmt: skip
            run_schemathesis(server, base, config_file, headers)
        output = run_schemathesis(server, server.management, workflow, auth, "--phases", "stateful")
        covered = re.search(r"API Links:\s+(\d+) covered", output)
        assert covered is not None and int(covered.group(1)) > 0, output[-3000:]
        assert call("GET", server.inference + "/v2/health/live").status == 200
        assert server.manage("GET", "/models/echo").status == 200, "the served models are still there"
    assert time.monotonic() - started < TOTAL_BUDGET_S
