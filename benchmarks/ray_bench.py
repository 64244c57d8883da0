"""modelserve's Ray worker backend side by side with its local backend and with Ray Serve 2.60, in one run.

    .venv/bin/python benchmarks/ray_bench.py            # the full comparison (about 10 minutes on 2 cores)
    .venv/bin/python benchmarks/ray_bench.py --quick    # smoke run: modelserve local and Ray only, under a minute

Three servers, both reference models of ``run.py`` loaded in each (the same TorchScript files, the same
preprocessing, the same per-model workers, batch size and batch delay, ``MODEL_CONFIG``):
- ``modelserve-local``: modelserve with its local backend, as ``run.py`` runs it;
- ``modelserve-ray``: modelserve with ``worker_backend=ray`` joined to a two-node Ray cluster of this machine
  (``handlers/ray_cluster.py``: a head with 1 CPU and a node with 1 CPU, on loopback), each worker asking for
  ``--num-cpus`` of a node;
- ``rayserve``: Ray Serve 2.60 in its own virtual environment (``work/venvs/rayserve``), on the same kind of two-node
  cluster, set up the way Serve's documentation does (``handlers/rayserve_app.py``): one application per model, a
  replica per worker with the same ``num_cpus`` and torch threads, ``@serve.batch`` with the same batch size and wait
  (through ``user_config``), ``max_ongoing_requests`` tuned to the requests the workload puts on each replica (W1 32,
  W2 4; ``--max-ongoing``), the HTTP proxy on the head only, on 127.0.0.1.

Every server's answers are checked against the first's before any speed counts, and again at the start of each of
its turns. The servers take turns (A B C, C B A, ...): W1 (ConvNet, PNG) at concurrency 32 and W2 (ResNet-18, JPEG)
at concurrency 8, ``wrk`` for ``--duration`` s per point after ``run.py``'s warm-up (4 s of each model at
concurrency 4). Measured for each: start to READY (from the first process's launch until both models answer, with
the Ray cluster's share), PSS and RSS of every process it started (for the Ray servers the cluster's GCS, raylets,
agents and actors included) split by role, and CPU per request of each role (psutil over the process trees):
``front`` (modelserve's parent; Serve's HTTP proxy actor), ``workers`` (modelserve's workers, as processes or Ray
actors; Serve's replicas), ``ray`` (everything else Ray runs: GCS, raylets, agents, monitors, Serve's controller,
the cluster's driver). Results: ``results/ray-<date>.json`` (``--quick``: ``work/ray-quick.json``) and the tables on
stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from run import (
    HERE,
    PYTHON,
    REPO,
    WORK,
    Server,
    check_answers,
    clean_env,
    ensure_assets,
    ensure_venv,
    free_port,
    load,
    log,
    machine,
    median_point,
    model_settings,
    modelserve_server,
    modelserve_store,
    write_results,
)

MODELS = ("convnet", "resnet18")
WORKLOADS = {
    # name: (model, input file, concurrency), as in run.py
    "W1 c=32": ("convnet", "digit.png", 32),
    "W2 c=8": ("resnet18", "cat.jpg", 8),
}
SERVERS = {"local": "modelserve-local", "ray": "modelserve-ray", "rayserve": "rayserve"}
RAYSERVE_PACKAGES = ["ray[serve]==2.60.0", "pillow", "numpy"]  # torch==2.13.0 first, as for every peer
# what each worker (modelserve's Ray actors, Serve's replicas) asks of a node: W1's one worker and W2's two fit the
# two nodes of one CPU each
NUM_CPUS = 0.5
CORES = len(os.sched_getaffinity(0))
# modelserve's default thread policy: the cores shared by all workers of the server (every replica gets as many)
THREADS = max(1, CORES // sum(model_settings(m)[0] for m in MODELS))
CLUSTER = "cluster"  # the "model" a cluster helper is ready for
TARGETS = (
    # (label, numerator, denominator, workload, wanted ratio)
    ("W1 c=32 throughput, modelserve Ray backend / Ray Serve", "modelserve-ray", "rayserve", "W1 c=32", 5.0),
    ("W2 c=8 throughput, modelserve Ray backend / Ray Serve", "modelserve-ray", "rayserve", "W2 c=8", 1.0),
    ("W1 c=32 throughput, modelserve Ray backend / local backend", "modelserve-ray", "modelserve-local", "W1 c=32",
     0.6),
)  # fmt: skip
RAY_SYSTEM_ACTORS = ("DashboardAgent", "RuntimeEnvAgent", "ServeController", "IDLE")
ROLES = ("front", "workers", "ray")


# ---- Ray's environment ------------------------------------------------------------------------------------------


def ray_environment() -> dict[str, str]:
    """The variables every Ray process of the run gets: modelserve's loopback settings (``ray_env``: no usage stats,
    node address 127.0.0.1, HOME with the bootstrap file that says there is no cloud to ask), and a loopback address
    for the "usage stats disabled" report that the dashboard sends for clusters not started by ``ray.init``."""
    from modelserve.workers.ray_env import loopback_environment

    variables = loopback_environment(WORK / "ray-home")
    variables["RAY_USAGE_STATS_REPORT_URL"] = f"http://127.0.0.1:{free_port()}/"
    return variables


@contextlib.contextmanager
def ray_temp_dir() -> Iterator[Path]:
    """A short temp dir for a cluster's sessions (its Unix sockets' paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def read_status(path: Path) -> dict[str, Any]:
    try:
        value: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value


# ---- servers ------------------------------------------------------------------------------------------------------


@dataclass
class RayServer(Server):
    """A server with a Ray cluster of its own: ``cluster`` (a helper that starts the nodes) is started and awaited
    before the server's own processes; ``status`` is the file where the helper notes when the cluster was up."""

    cluster: Server | None = None
    status: Path | None = None
    phases: dict[str, float] = field(default_factory=dict)

    def start(self, assets: Path, models: list[str], timeout: float = 300.0) -> float:
        began = time.monotonic()
        if self.status is not None:
            self.status.unlink(missing_ok=True)
        if self.cluster is not None:
            self.cluster.start(assets, [CLUSTER], timeout)
        try:
            own = super().start(assets, models, timeout)
        except BaseException:
            if self.cluster is not None:
                self.cluster.stop()
            raise
        ready = time.monotonic()
        if self.cluster is not None:  # stopped after the server: modelserve leaves the cluster first
            self.processes = [*self.processes, *self.cluster.processes]
            self.cluster.processes = []
        status = read_status(self.status) if self.status is not None else {}
        self.phases = {"server_s": own}
        if "cluster_up" in status:
            self.phases["cluster_s"] = status["cluster_up"] - began
        for key in ("serve_up", "deployed"):
            if key in status:
                self.phases[f"{key}_s"] = status[key] - began
        self.ready_s = ready - began
        return self.ready_s

    def stop(self) -> None:
        super().stop()
        if self.cluster is not None:
            self.cluster.stop()


def status_probe(status: Path) -> Callable[[str], bool]:
    return lambda _model: "cluster_up" in read_status(status)


def modelserve_ray_server(assets: Path, ray_env: dict[str, str], temp_dir: Path) -> RayServer:
    """modelserve with ``worker_backend=ray`` on a fresh two-node cluster (started by ``handlers/ray_cluster.py``
    with this venv's Python, so the actors import this checkout's modelserve and torch)."""
    status = WORK / "ray-cluster-status.json"
    gcs_port = free_port()
    store = modelserve_store(assets, extra_config=f"num_cpus: {NUM_CPUS:g}\n")
    plain = modelserve_server(
        store, list(MODELS), "modelserve-ray", properties=["worker_backend=ray", f"ray_address=127.0.0.1:{gcs_port}"]
    )
    command = plain.start_command

    def with_ray_env() -> list[tuple[list[str], dict[str, str]]]:
        return [(line, {**env, **ray_env}) for line, env in command()]

    def cluster_command() -> list[tuple[list[str], dict[str, str]]]:
        helper = [str(PYTHON), str(HERE / "handlers" / "ray_cluster.py"), str(status), str(gcs_port), str(temp_dir)]
        return [(helper, clean_env(PYTHONPATH=str(REPO), **ray_env))]

    cluster = Server("modelserve-ray-cluster", cluster_command, lambda _m: "", probe=status_probe(status))
    return RayServer(plain.name, with_ray_env, plain.url_for, ports=plain.ports, cluster=cluster, status=status)


def max_ongoing_for(model: str) -> int:
    """Serve's ``max_ongoing_requests`` for a model, tuned: what the workload puts on each replica, at least a batch.

    Fewer than that and Serve's router holds requests back and retries with back-off (W1 c=32 with 16: 42 req/s
    against 129 with 32 in one sweep); more lets its router load one of W2's two replicas with more than the other
    (W2 c=8 with 8: 11.8, 6.6 and 5.9 req/s against 17.3, 9.6 and 8.2 with 4, alternating on a busy machine).
    """
    workers, batch, _ = model_settings(model)
    concurrency = max(c for m, _, c in WORKLOADS.values() if m == model)
    return max(batch, -(-concurrency // workers))


def rayserve_settings(assets: Path, max_ongoing: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Per model, what Serve's deployment gets: MODEL_CONFIG's workers, batch size and delay, and the rest."""
    settings = {}
    for model in MODELS:
        workers, batch, delay_ms = model_settings(model)
        settings[model] = {
            "path": str(assets / f"{model}.pt"),
            "kind": model,
            "replicas": workers,
            "max_batch_size": batch,
            "batch_wait_timeout_s": delay_ms / 1000.0,
            "max_ongoing_requests": max_ongoing.get(model, max_ongoing_for(model)),
            "num_cpus": NUM_CPUS,
            "threads": THREADS,
        }
    return settings


def rayserve_server(
    assets: Path,
    venv: Path,
    ray_env: dict[str, str],
    temp_dir: Path,
    settings: dict[str, dict[str, Any]],
    access_log: bool = True,
) -> RayServer:
    status = WORK / "rayserve-status.json"
    port = free_port()
    spec = WORK / "rayserve-spec.json"
    spec.write_text(json.dumps({
        "status": str(status), "gcs_port": free_port(), "temp_dir": str(temp_dir), "http_port": port,
        "handlers": str(HERE / "handlers"), "models": settings, "access_log": access_log,
    }, indent=2))  # fmt: skip

    def command() -> list[tuple[list[str], dict[str, str]]]:
        return [([str(venv / "bin" / "python"), str(HERE / "handlers" / "rayserve_app.py"), str(spec)],
                 clean_env(**ray_env))]  # fmt: skip

    return RayServer("rayserve", command, lambda m: f"http://127.0.0.1:{port}/{m}", status=status)


# ---- accounting ---------------------------------------------------------------------------------------------------


def role_of(process: psutil.Process, root: psutil.Process, root_line: list[str]) -> str:
    """``front``, ``workers`` or ``ray`` (see the module's docstring) for a process of a server's tree."""
    line = process.cmdline()
    joined = " ".join(line)
    ray_root = any(name in " ".join(root_line) for name in ("ray_cluster.py", "rayserve_app.py"))
    if process.pid == root.pid:
        return "ray" if ray_root else "front"
    if joined.startswith("ray::"):
        actor = joined[len("ray::") :].split()[0]
        if actor.startswith(RAY_SYSTEM_ACTORS):
            return "ray"
        return "front" if actor.startswith("ProxyActor") else "workers"
    if ray_root:
        return "ray"  # the GCS, raylets, monitors, the dashboard in its minimal form
    return "front" if line == root_line or any("resource_tracker" in a for a in line) else "workers"


def processes_by_role(server: Server) -> list[tuple[psutil.Process, str]]:
    found = []
    for started in server.processes:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(started.pid)
            root_line = root.cmdline()
            for process in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    found.append((process, role_of(process, root, root_line)))
    return found


def cpu_by_role(server: Server) -> dict[str, float]:
    """User + system CPU seconds so far of each role's processes."""
    seconds = dict.fromkeys(ROLES, 0.0)
    for process, role in processes_by_role(server):
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            seconds[role] += times.user + times.system
    return seconds


def memory_by_role(server: Server) -> dict[str, dict[str, int]]:
    """PSS and RSS in bytes of each role's processes, and their count."""
    usage = {role: {"pss": 0, "rss": 0, "processes": 0} for role in ROLES}
    for process, role in processes_by_role(server):
        with contextlib.suppress(psutil.Error):
            info = process.memory_full_info()
            usage[role]["pss"] += int(getattr(info, "pss", info.rss))
            usage[role]["rss"] += int(info.rss)
            usage[role]["processes"] += 1
    return usage


# ---- the run ------------------------------------------------------------------------------------------------------


def check_against(server: Server, assets: Path, reference: dict[str, Any] | None) -> dict[str, Any]:
    """The server's answers for both models, which must be the reference's (when there is one yet)."""
    answers = check_answers([server], assets, MODELS)[server.name]
    if reference is not None and answers != reference:
        raise RuntimeError(f"answers differ: {server.name} {answers} vs the first server's {reference}")
    return answers


def measure_turn(server: RayServer | Server, assets: Path, duration: float, record: dict[str, Any],
                 reference: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    """One server's turn: start, check its answers, warm up, memory, the workloads; stopped whatever happens."""
    ready = server.start(assets, list(MODELS))
    try:
        answers = check_against(server, assets, reference)
        for model in MODELS:  # warm-up, not counted (as run.py)
            load(server, assets, model, 4, min(4.0, duration))
        memory = memory_by_role(server)
        record.setdefault("ready_s", []).append(ready)
        record.setdefault("phases", []).append(getattr(server, "phases", {}))
        record.setdefault("pss_bytes", []).append(sum(m["pss"] for m in memory.values()))
        record.setdefault("rss_bytes", []).append(sum(m["rss"] for m in memory.values()))
        record.setdefault("memory_by_role", []).append(memory)
        log(f"  {server.name:16s} ready in {ready:.2f} s{phases_text(getattr(server, 'phases', {}))}, PSS "
            f"{sum(m['pss'] for m in memory.values()) / 1e6:.0f} MB ("
            + ", ".join(f"{r} {m['pss'] / 1e6:.0f}" for r, m in memory.items() if m["processes"]) + ")")  # fmt: skip
        for label, (model, _, concurrency) in WORKLOADS.items():
            before = cpu_by_role(server)
            point = load(server, assets, model, concurrency, duration)
            after = cpu_by_role(server)
            served = max(point.requests, 1)
            entry = {
                **point.__dict__,
                **{f"{role}_cpu_ms_per_request": (after[role] - before[role]) * 1000 / served for role in ROLES},
            }
            record.setdefault(label, []).append(entry)
            log(f"  {server.name:16s} {label:8s} {point.throughput:8.1f} req/s  p50 {point.p50_ms:7.2f} ms  "
                f"p99 {point.p99_ms:7.2f} ms  errors {point.errors}  CPU ms/req "
                + " ".join(f"{role} {entry[f'{role}_cpu_ms_per_request']:.3f}" for role in ROLES))  # fmt: skip
    finally:
        server.stop()
    return answers


def phases_text(phases: dict[str, float]) -> str:
    if "cluster_s" not in phases:
        return ""
    return f" (cluster up at {phases['cluster_s']:.2f} s)"


def summarize(record: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "ready_s": statistics.median(record["ready_s"]),
        "pss_mb": statistics.median(record["pss_bytes"]) / 1e6,
        "rss_mb": statistics.median(record["rss_bytes"]) / 1e6,
        "pss_mb_by_role": {
            role: statistics.median(m[role]["pss"] for m in record["memory_by_role"]) / 1e6 for role in ROLES
        },
    }
    phases = [p for p in record["phases"] if "cluster_s" in p]
    if phases:
        entry["cluster_s"] = statistics.median(p["cluster_s"] for p in phases)
    for label in WORKLOADS:
        if label in record:
            entry[label] = median_point(record[label])
    return entry


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def cell(point: dict[str, float]) -> str:
    cpu = " + ".join(f"{point[f'{role}_cpu_ms_per_request']:.2f}" for role in ROLES)
    return f"{point['throughput']:.0f} ({point['p50_ms']:.1f} / {point['p99_ms']:.1f}); {cpu}"


def tables(summary: dict[str, dict[str, Any]], targets: list[dict[str, Any]], rounds: int) -> str:
    names = list(summary)
    lines = [
        f"Medians of {rounds} round(s); cells: req/s (p50 / p99 ms); CPU ms per request, front + workers + ray:",
        "",
        "| workload | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for label in WORKLOADS:
        lines.append(f"| {label} | " + " | ".join(cell(summary[n][label]) for n in names) + " |")
    lines += ["", "| | " + " | ".join(names) + " |", "| --- | " + " | ".join("---" for _ in names) + " |"]
    lines.append(
        "| start to READY (s) | "
        + " | ".join(
            f"{s['ready_s']:.2f}" + (f" (cluster {s['cluster_s']:.2f})" if "cluster_s" in s else "")
            for s in summary.values()
        )
        + " |"
    )
    lines.append("| PSS / RSS (MB) | " + " | ".join(f"{s['pss_mb']:.0f} / {s['rss_mb']:.0f}" for s in summary.values())
                 + " |")  # fmt: skip
    lines.append(
        "| PSS front + workers + ray (MB) | "
        + " | ".join(" + ".join(f"{s['pss_mb_by_role'][r]:.0f}" for r in ROLES) for s in summary.values())
        + " |"
    )
    lines += ["", "| target | wanted | measured | per round | |", "| --- | --- | --- | --- | --- |"]
    for target in targets:
        measured = target["measured"]
        shown = "-" if measured is None else f"{measured:.2f}x"
        rounds_shown = ", ".join(f"{r:.2f}" for r in target["per_round"] if r is not None) or "-"
        verdict = "-" if measured is None else ("met" if measured >= target["wanted"] else "NOT met")
        lines.append(f"| {target['target']} | >= {target['wanted']:g}x | {shown} | {rounds_shown} | {verdict} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: modelserve local and Ray, 1 s points")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured point")
    parser.add_argument("--rounds", type=int, default=3, help="A B C, C B A, ... rounds")
    parser.add_argument("--servers", default="local,ray,rayserve", help=f"some of {','.join(SERVERS)}")
    parser.add_argument(
        "--max-ongoing", default="",
        help="Ray Serve's max_ongoing_requests per model, e.g. convnet=32,resnet18=8 (default: max_ongoing_for)",
    )  # fmt: skip
    parser.add_argument(
        "--serve-access-log", choices=("on", "off"), default="on",
        help="Ray Serve's log line per request in the proxy and the replicas (default on, Serve's default)",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds, args.servers = 1.0, 1, "local,ray"
    wanted = [s.strip() for s in args.servers.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SERVERS]
    if unknown or not wanted:
        parser.error(f"--servers: unknown {unknown}; choose from {', '.join(SERVERS)}")
    max_ongoing = {k: int(v) for k, v in (p.split("=", 1) for p in args.max_ongoing.split(",") if p)}
    # the commit the servers start from (read now: a commit during the run does not rename the run)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, check=False
    ).stdout.strip()
    WORK.mkdir(exist_ok=True)
    assets = ensure_assets()
    ray_env = ray_environment() if {"ray", "rayserve"} & set(wanted) else {}
    venv = ensure_venv("rayserve", RAYSERVE_PACKAGES) if "rayserve" in wanted else None
    serve_settings = rayserve_settings(assets, max_ongoing)
    with ray_temp_dir() as temp_dir:
        factories: dict[str, Callable[[], Server]] = {}
        if "local" in wanted:
            factories[SERVERS["local"]] = lambda: modelserve_server(
                modelserve_store(assets), list(MODELS), "modelserve-local"
            )
        if "ray" in wanted:
            factories[SERVERS["ray"]] = lambda: modelserve_ray_server(assets, ray_env, temp_dir / "b")
        if venv is not None:
            factories[SERVERS["rayserve"]] = lambda: rayserve_server(
                assets, venv, ray_env, temp_dir / "c", serve_settings, args.serve_access_log == "on"
            )
        names = list(factories)
        answers: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        reference: dict[str, Any] | None = None
        if not args.quick:  # every server's answers before any speed counts, as run.py does
            log("checking that every server gives the same answers")
            for name in names:
                server = factories[name]()
                server.start(assets, list(MODELS))
                try:
                    answers[name].append(check_against(server, assets, reference))
                finally:
                    server.stop()
                reference = reference or answers[name][0]
        raw: dict[str, dict[str, Any]] = {name: {} for name in names}
        for round_index in range(args.rounds):
            for name in names if round_index % 2 == 0 else names[::-1]:
                log(f"round {round_index + 1}: {name}")
                answers[name].append(measure_turn(factories[name](), assets, args.duration, raw[name], reference))
                reference = reference or answers[name][-1]
    summary = {name: summarize(record) for name, record in raw.items()}
    targets = []
    for label, over, under, workload, wanted_ratio in TARGETS:
        measured = per_round = None
        if over in summary and under in summary:
            measured = ratio(summary[over][workload]["throughput"], summary[under][workload]["throughput"])
            per_round = [
                ratio(a["throughput"], b["throughput"])
                for a, b in zip(raw[over][workload], raw[under][workload], strict=True)
            ]
        targets.append({"target": label, "wanted": wanted_ratio, "measured": measured, "per_round": per_round or []})
    result = {
        "commit": commit,
        "machine": machine(),
        "settings": {
            "quick": args.quick,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "servers": names,
            "workloads": WORKLOADS,
            "load_generator": "wrk" if shutil.which("wrk") else "python threads",
            "model_config": {m: model_settings(m) for m in MODELS},
            "num_cpus_per_worker": NUM_CPUS,
            "threads_per_worker": THREADS,
            "ray_cluster": "ray.cluster_utils.Cluster: head num_cpus=1 + one node num_cpus=1, 127.0.0.1, "
            "object stores of 150 MiB, no dashboard",
            "rayserve_packages": RAYSERVE_PACKAGES if venv is not None else [],
            # the deployments' settings as given, with the model's file name rather than this machine's path
            "rayserve": {
                m: {**{k: v for k, v in c.items() if k != "path"}, "model_file": Path(c["path"]).name}
                for m, c in serve_settings.items()
            }
            if venv is not None
            else {},
            "rayserve_access_log": args.serve_access_log == "on",
        },
        "answers": answers,
        "raw": raw,
        "summary": summary,
        "targets": targets,
    }
    # a smoke run's results stay in work/ (not a results file of the repository) unless --output says otherwise
    output = write_results("ray", result, args.output or (WORK / "ray-quick.json" if args.quick else None))
    print()
    print(tables(summary, targets, args.rounds))
    print(f"\nresults in {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
