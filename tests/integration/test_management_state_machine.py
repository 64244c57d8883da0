"""A hypothesis state machine over register / scale / set-default / unregister / infer against one real server.

Invariants after every step: every inference got an answer (200, or a documented 404/503, never a 5xx otherwise or
a dropped connection), the description matches the operations done (versions, worker counts, default version), and
the server's file descriptors stay bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import psutil
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.support.server import ServerProcess, call, make_archive, running_server

VERSIONS = ("1.0", "2.0")
ARCHIVES = {"1.0": "sm.mar", "2.0": "sm-2.0.mar"}
FD_PER_WORKER = 5  # the parent's side of one worker: its socket, two output pipes, the process handle, slack
FD_SLACK = 6


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("state-machine")
    store = root / "model_store"
    store.mkdir()
    for version in VERSIONS:
        make_archive(store, "sm", "echo_handler.py", version=version, config_yaml="minWorkers: 0\n")
    config = "max_workers_total=4\njob_queue_size=20\n"
    with running_server(root, store, [], extra_args=["--enable-model-api", "--ncs", "--disable-token-auth"],
                        config=config) as running:  # fmt: skip
        yield running


class ManagementMachine(RuleBasedStateMachine):
    server: ClassVar[ServerProcess]
    fds_baseline: ClassVar[int]
    answered: ClassVar[dict[int, int]] = {}  # inference status -> count, over the whole run

    def __init__(self) -> None:
        super().__init__()
        self.workers: dict[str, int] = {}  # registered version -> its worker count
        self.default: str | None = None

    def _manage(self, method: str, path: str) -> int:
        return call(method, self.server.management + path, timeout=60).status

    @rule(version=st.sampled_from(VERSIONS), workers=st.integers(0, 2))
    def register(self, version: str, workers: int) -> None:
        status = self._manage("POST", f"/models?url={ARCHIVES[version]}&initial_workers={workers}&synchronous=true")
        if version in self.workers:
            assert status == 409
        elif sum(self.workers.values()) + workers > 4:
            assert status == 400
        else:
            assert status == 200
            self.workers[version] = workers
            self.default = self.default or version

    @rule(version=st.sampled_from(VERSIONS), workers=st.integers(0, 2))
    def scale(self, version: str, workers: int) -> None:
        status = self._manage("PUT", f"/models/sm/{version}?min_worker={workers}&synchronous=true")
        if version not in self.workers:
            assert status == 404
        else:
            assert status == 200
            self.workers[version] = workers

    @rule(version=st.sampled_from(VERSIONS))
    def set_default(self, version: str) -> None:
        status = self._manage("PUT", f"/models/sm/{version}/set-default")
        assert status == (200 if version in self.workers else 404)
        if version in self.workers:
            self.default = version

    @rule(version=st.sampled_from(VERSIONS))
    def unregister(self, version: str) -> None:
        status = self._manage("DELETE", f"/models/sm/{version}")
        if version not in self.workers:
            assert status == 404
        elif version == self.default and len(self.workers) > 1:
            assert status == 403
        else:
            assert status == 200
            del self.workers[version]
            if self.default == version:
                self.default = next(iter(self.workers), None)

    @rule(version=st.sampled_from((None, *VERSIONS)), body=st.binary(max_size=64))
    def infer(self, version: str | None, body: bytes) -> None:
        path = "/predictions/sm" + (f"/{version}" if version else "")
        response = call("POST", self.server.inference + path, body, timeout=60)
        self.answered[response.status] = self.answered.get(response.status, 0) + 1
        target = version or self.default
        if target is None or target not in self.workers:
            assert response.status == 404, response.text
        elif self.workers[target] == 0:
            assert response.status == 503, response.text
        else:
            assert response.status == 200, response.text
            assert response.body == body

    @invariant()
    def description_matches(self) -> None:
        response = call("GET", self.server.management + "/models/sm/all", timeout=30)
        if not self.workers:
            assert response.status == 404
            return
        described = {d["modelVersion"]: d for d in response.json()}
        assert set(described) == set(self.workers)
        for version, count in self.workers.items():
            assert described[version]["minWorkers"] == count
            assert len(described[version]["workers"]) == count
        listed = call("GET", self.server.management + "/models").json()["models"]
        assert listed == [{"modelName": "sm", "modelUrl": ARCHIVES[self.default or ""]}]

    @invariant()
    def fds_bounded(self) -> None:
        assert self.server.process is not None
        fds = psutil.Process(self.server.process.pid).num_fds()
        bound = self.fds_baseline + FD_PER_WORKER * sum(self.workers.values()) + FD_SLACK
        assert fds <= bound, f"{fds} descriptors with {self.workers} workers, {self.fds_baseline} at the start"

    def teardown(self) -> None:
        others = [v for v in self.workers if v != self.default]
        for version in [*others, *([self.default] if self.default else [])]:
            assert self._manage("DELETE", f"/models/sm/{version}") == 200


@pytest.mark.slow
def test_management_operations_in_any_order_keep_the_server_consistent(server: ServerProcess) -> None:
    assert server.process is not None
    ManagementMachine.server = server
    ManagementMachine.fds_baseline = psutil.Process(server.process.pid).num_fds()
    run_state_machine_as_test(
        ManagementMachine,
        settings=settings(max_examples=15, stateful_step_count=15, deadline=None, derandomize=True,
                          suppress_health_check=list(HealthCheck), database=None),
    )  # fmt: skip
    # the run did exercise served versions, not only refusals
    assert ManagementMachine.answered.get(200, 0) >= 3, ManagementMachine.answered
    assert "Traceback" not in server.log_text()
