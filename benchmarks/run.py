"""Side-by-side benchmark: modelserve against TorchServe 0.12.0 (tuned) and LitServe 0.2.19, plus the in-process limit.

    .venv/bin/python benchmarks/run.py                 # the full comparison (about 20 minutes on 2 cores)
    .venv/bin/python benchmarks/run.py --quick         # a few seconds, modelserve only (the test suite's smoke run)

Every figure that is compared comes from the same run; servers run alternately (A B A B ...), with both reference
models loaded. Answers are checked to be identical before speed counts. Results: ``benchmarks/results/*.json``, the
table in ``benchmarks/README.md`` and ``benchmarks/results/latency.png``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "work"
RESULTS = HERE / "results"
PYTHON = Path(sys.executable)
BIN = PYTHON.parent

WORKLOADS = {
    # name: (model, input file, concurrency)
    "W1 c=1": ("convnet", "digit.png", 1),
    "W1 c=32": ("convnet", "digit.png", 32),
    "W2 c=8": ("resnet18", "cat.jpg", 8),
    "W3 c=32": ("iris", "iris.json", 32),
}
# The per-model settings every server gets in the "same settings" comparison: modelserve and TorchServe read these
# model-config.yaml keys alike, LitServe gets the same workers, batch size and delay as arguments.
MODEL_CONFIG = {
    "convnet": "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 16\nmaxBatchDelay: 2\n",
    "resnet18": "minWorkers: 2\nmaxWorkers: 2\nbatchSize: 4\nmaxBatchDelay: 5\n",
    "iris": "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 16\nmaxBatchDelay: 2\n",
}
# model -> (input file, its Content-Type); LitServe takes images as base64 JSON (the input file + ".json")
INPUTS = {
    "convnet": ("digit.png", "application/octet-stream"),
    "resnet18": ("cat.jpg", "application/octet-stream"),
    "iris": ("iris.json", "application/json"),
}


def input_model(name: str) -> str:
    """The model whose input ``name`` takes: itself, or convnet for its copies convnet0, convnet1, ..."""
    return name if name in INPUTS else name.rstrip("0123456789")


# "same": every server with MODEL_CONFIG; "defaults": archives without a model-config.yaml, LitServe in its
# idiomatic setup (LITSERVE_DEFAULTS). TorchServe runs with OMP_NUM_THREADS=1 in both (its own advice).
SETTINGS_MODES = ("same", "defaults")
LITSERVE_DEFAULTS = (2, 8, 5.0)  # workers per model, max_batch_size, batch_timeout in ms


def model_settings(model: str) -> tuple[int, int, float]:
    """(workers, batch size, batch delay in ms) of MODEL_CONFIG for ``model``."""
    values = dict(line.split(": ", 1) for line in MODEL_CONFIG[model].splitlines() if ": " in line)
    return int(values["minWorkers"]), int(values["batchSize"]), float(values["maxBatchDelay"])


def write_results(kind: str, data: dict[str, Any], output: Path | None = None) -> Path:
    """``data`` with the date first, as ``results/<kind>-<time>.json`` (or ``output``); logs and returns the path."""
    RESULTS.mkdir(exist_ok=True)
    output = output or RESULTS / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    output.write_text(json.dumps({"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **data}, indent=2))
    log(f"results in {output}")
    return output


def machine() -> dict[str, Any]:
    """What a results file says of the machine it was measured on."""
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
    }


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_post(url: str, body: bytes, content_type: str, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except OSError:
        return 0, b""


def tree_memory(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of a process and all its descendants, in bytes."""
    pss = rss = 0
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            info = process.memory_full_info()
            pss += int(getattr(info, "pss", info.rss))
            rss += int(info.rss)
    return pss, rss


def tree_cpu(pids: list[int]) -> tuple[float, float]:
    """User+system CPU seconds so far of a server's front end and of its workers.

    The front end is each started process, its forked copies (LitServe's API server processes run the started
    command line), any JVM below it (TorchServe's frontend) and multiprocessing's resource tracker; the workers are
    every other descendant: modelserve's template and workers, TorchServe's Python backends, LitServe's inference
    processes.
    """
    front = workers = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            command = root.cmdline()
            children = root.children(recursive=True)
        except psutil.Error:
            continue
        for process in [root, *children]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                seconds = times.user + times.system
                line = process.cmdline()
                if line == command or process.name() == "java" or any("resource_tracker" in a for a in line):
                    front += seconds
                else:
                    workers += seconds
    return front, workers


def kill_tree(process: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()


# ---- assets, environments, archives -------------------------------------------------------------------------------


def ensure_assets() -> Path:
    assets = WORK / "assets"
    if not (assets / "resnet18.pt").is_file() or not (assets / "iris.onnx").is_file():
        log("generating reference models and inputs")
        subprocess.run([str(PYTHON), str(HERE / "models" / "make_assets.py"), str(assets)], check=True)
        for name in ("digit.png", "cat.jpg"):
            encoded = base64.b64encode((assets / name).read_bytes()).decode()
            (assets / f"{name}.json").write_text(json.dumps({"image": encoded}))
    return assets


def ensure_venv(name: str, packages: list[str], torch: str | None = "torch==2.13.0") -> Path:
    """A virtual environment under work/venvs with ``packages`` (and ``torch`` first, unless None), made once."""
    venv = WORK / "venvs" / name
    marker = venv / ".installed"
    if marker.is_file() and marker.read_text() == " ".join(packages):
        return venv
    log(f"installing {name} into its own virtual environment: {' '.join(packages)}")
    subprocess.run([str(PYTHON), "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    if torch is not None:
        subprocess.run([*pip, torch], check=True)
    subprocess.run([*pip, *packages], check=True)
    marker.write_text(" ".join(packages))
    return venv


def modelserve_store(
    assets: Path,
    copies: int = 1,
    batch_size: int | None = None,
    optimize: bool = True,
    settings: str = "same",
    extra_config: str = "",
) -> Path:
    """Archives of both models (``copies`` of the small one) for modelserve, optionally with another batchSize;
    ``settings`` "defaults" packs them without a model-config.yaml; ``extra_config`` (model-config.yaml lines) goes
    into every model's config."""
    from modelserve.archive.packer import PackRequest, pack_archive

    suffix = "" if settings == "same" else f"-{settings}"
    if extra_config:
        suffix += "-" + re.sub(r"[^A-Za-z0-9]+", "-", extra_config).strip("-")
    store = WORK / f"store-modelserve-{copies}-{batch_size or 'default'}{'' if optimize else '-plain'}{suffix}"
    if store.is_dir():
        return store
    store.mkdir(parents=True)
    for model, base_config in MODEL_CONFIG.items():
        config = base_config if settings == "same" else ""
        if batch_size is not None and model == "convnet":
            config = re.sub(r"batchSize: \d+", f"batchSize: {batch_size}", config)
        if not optimize:
            config += "optimize: false\n"
        config += extra_config
        config_path: Path | None = None
        if config:
            config_path = store / f".{model}-config.yaml"
            config_path.write_text(config)
        names = [model] if model != "convnet" or copies == 1 else [f"{model}{i}" for i in range(copies)]
        for name in names:
            if model == "iris":  # the built-in onnx handler, as a user would serve it
                files: tuple[str, Path, list[Path]] = ("onnx", assets / "iris.onnx", [assets / "feature_names.json"])
            else:
                files = (str(HERE / "handlers" / "modelserve_top_class.py"), assets / f"{model}.pt",
                         [HERE / "handlers" / "preprocess.py"])  # fmt: skip
            pack_archive(
                PackRequest(
                    model_name=name, handler=files[0], serialized_file=files[1], extra_files=files[2],
                    config_file=config_path, export_path=store, archive_format="zip-store",
                )
            )  # fmt: skip
    return store


def torchserve_store(assets: Path, venv: Path, settings: str = "same") -> Path:
    """Archives of both models for TorchServe; with ``settings`` "same" each carries MODEL_CONFIG as its
    model-config.yaml (TorchServe reads minWorkers, maxWorkers, batchSize and maxBatchDelay from it)."""
    store = WORK / f"store-torchserve-{settings}"
    if store.is_dir():
        return store
    store.mkdir(parents=True)
    for model, config in MODEL_CONFIG.items():
        extra: list[str] = []
        if settings == "same":
            config_path = store / f".{model}-config.yaml"
            config_path.write_text(config)
            extra = ["--config-file", str(config_path)]
        if model == "iris":
            extra += ["--extra-files", str(assets / "feature_names.json")]
            files = (assets / "iris.onnx", HERE / "handlers" / "torchserve_iris.py")
        else:
            files = (assets / f"{model}.pt", HERE / "handlers" / "torchserve_top_class.py")
        subprocess.run(
            [str(venv / "bin" / "torch-model-archiver"), "--model-name", model, "--version", "1.0",
             "--serialized-file", str(files[0]), "--handler", str(files[1]), "--export-path", str(store),
             "--archive-format", "zip-store", *extra],
            check=True,
        )  # fmt: skip
    return store


# ---- servers ------------------------------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    start_command: Callable[[], list[tuple[list[str], dict[str, str]]]]
    url_for: Callable[[str], str]
    json_bodies: bool = False  # LitServe: every body is JSON (images as base64)
    # whether a model answers (default: a POST of its input to url_for gets 200)
    probe: Callable[[str], bool] | None = None
    ports: dict[str, int] = field(default_factory=dict)  # the ports it was given, by role
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ready_s: float = 0.0

    def start(self, assets: Path, models: list[str], timeout: float = 300.0) -> float:
        started = time.monotonic()
        logs = WORK / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for index, (command, env) in enumerate(self.start_command()):
            out = open(logs / f"{self.name}-{index}.log", "ab")  # noqa: SIM115 - kept open for the server's life
            self.processes.append(
                subprocess.Popen(
                    command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=WORK, start_new_session=True
                )
            )
        try:
            self._wait_ready(assets, models, started + timeout)
        except BaseException:
            self.stop()  # a server that did not start is not left running
            raise
        self.ready_s = time.monotonic() - started
        return self.ready_s

    def _wait_ready(self, assets: Path, models: list[str], deadline: float) -> None:
        pending = set(models)
        while pending and time.monotonic() < deadline:
            for model in list(pending):
                if self.probe(model) if self.probe is not None else self.post(assets, model, timeout=5)[0] == 200:
                    pending.discard(model)
            if any(p.poll() is not None for p in self.processes):
                raise RuntimeError(f"{self.name} exited during start; see {WORK / 'logs'}")
            time.sleep(0.05)
        if pending:
            raise RuntimeError(f"{self.name}: {', '.join(pending)} not ready in time")

    def body(self, assets: Path, model: str) -> Path:
        source = INPUTS[input_model(model)][0]
        return assets / (f"{source}.json" if self.json_bodies and not source.endswith(".json") else source)

    def content_type(self, model: str) -> str:
        return "application/json" if self.json_bodies else INPUTS[input_model(model)][1]

    def post(self, assets: Path, model: str, timeout: float = 30.0) -> tuple[int, bytes]:
        body = self.body(assets, model).read_bytes()
        return http_post(self.url_for(model), body, self.content_type(model), timeout)

    def memory(self) -> tuple[int, int]:
        totals = [tree_memory(p.pid) for p in self.processes]
        return sum(t[0] for t in totals), sum(t[1] for t in totals)

    def stop(self) -> None:
        for process in self.processes:
            kill_tree(process)
        self.processes = []


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS") and not k.startswith("MODELSERVE_")}
    env.update(extra)
    return env


def modelserve_server(
    store: Path,
    models: list[str],
    tag: str = "modelserve",
    source: Path | None = None,
    prefix: Sequence[str] = (),
    grpc: bool = False,
    properties: Sequence[str] = (),
) -> Server:
    """modelserve from this checkout, or (``source``) from another checkout of it: the same venv, that code first.

    ``prefix`` goes before the command (a counter such as valgrind that runs the parent process). ``grpc``: gRPC on
    free loopback ports (``ports["grpc_inference"]``, ``ports["grpc_management"]``), else off (its default ports
    would clash between servers run side by side, and with TorchServe's). ``properties``: more config.properties
    lines (``key=value``).
    """
    ports = {key: free_port() for key in ("inference", "management", "metrics")}
    lines = [f"{k}_address=http://127.0.0.1:{p}\n" for k, p in ports.items()]
    if grpc:
        for key in ("grpc_inference", "grpc_management"):
            ports[key] = free_port()
            lines.append(f"{key}_address=127.0.0.1\n{key}_port={ports[key]}\n")
    else:
        lines.append("enable_grpc=false\n")
    lines += [f"{line}\n" for line in properties]
    config = WORK / f"{tag}.properties"
    config.write_text("".join(lines))

    def command() -> list[tuple[list[str], dict[str, str]]]:
        # this checkout's code first, whatever the venv has installed (a run from a worktree measures that tree)
        env = clean_env(PYTHONPATH=str(source if source is not None else REPO))
        return [([*prefix, str(PYTHON), "-m", "modelserve.cli", "--start", "--foreground", "--ncs",
                  "--disable-token-auth", "--model-store", str(store), "--ts-config", str(config),
                  "--pid-file", str(WORK / f"{tag}.pid"),
                  "--models", *[f"{m}={m}.mar" for m in models]], env)]  # fmt: skip

    return Server(tag, command, lambda m: f"http://127.0.0.1:{ports['inference']}/predictions/{m}", ports=ports)


def _checkout_path(commit: str) -> tuple[str, Path]:
    sha = subprocess.run(["git", "rev-parse", "--short", commit], capture_output=True, text=True, cwd=REPO,
                         check=True).stdout.strip()  # fmt: skip
    return sha, WORK / f"baseline-{sha}"


def baseline_checkout(commit: str) -> tuple[str, Path]:
    """A detached worktree of ``commit`` under work/, to run the code before a change beside the code after it."""
    sha, path = _checkout_path(commit)
    if not (path / "modelserve").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", "--force", str(path), sha], cwd=REPO, check=True,
                       capture_output=True)  # fmt: skip
    return f"modelserve@{sha}", path


@contextlib.contextmanager
def temporary_checkout(commit: str) -> Iterator[tuple[str, Path]]:
    """``baseline_checkout`` for the length of a run: a worktree this call added is removed again afterwards."""
    existed = (_checkout_path(commit)[1] / "modelserve").is_dir()
    tag, path = baseline_checkout(commit)
    try:
        yield tag, path
    finally:
        if not existed:
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=REPO, check=True,
                           capture_output=True)  # fmt: skip


def torchserve_server(store: Path, venv: Path) -> Server:
    ports = {key: free_port() for key in ("inference", "management", "metrics")}
    config = WORK / "torchserve.properties"
    config.write_text(
        "".join(f"{k}_address=http://127.0.0.1:{p}\n" for k, p in ports.items())
        + f"model_store={store}\ndisable_token_authorization=true\n"
    )

    def command() -> list[tuple[list[str], dict[str, str]]]:
        env = clean_env(OMP_NUM_THREADS="1", PATH=f"{venv / 'bin'}:{os.environ.get('PATH', '')}")
        return [([str(venv / "bin" / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth",
                  "--ts-config", str(config), "--model-store", str(store),
                  "--models", *[f"{m}={m}.mar" for m in MODEL_CONFIG]], env)]  # fmt: skip

    return Server("torchserve", command, lambda m: f"http://127.0.0.1:{ports['inference']}/predictions/{m}")


def litserve_server(assets: Path, venv: Path, settings: str = "same") -> Server:
    """One LitServe server per model: MODEL_CONFIG's workers, batch size and delay ("same"), or LITSERVE_DEFAULTS."""
    ports = {model: free_port() for model in MODEL_CONFIG}

    def command() -> list[tuple[list[str], dict[str, str]]]:
        python = str(venv / "bin" / "python")
        app = str(HERE / "handlers" / "litserve_app.py")
        commands = []
        for model, port in ports.items():
            workers, batch, delay_ms = model_settings(model) if settings == "same" else LITSERVE_DEFAULTS
            path = assets / ("iris.onnx" if model == "iris" else f"{model}.pt")
            commands.append(([python, app, str(path), model, str(port), str(workers), str(batch),
                              str(delay_ms / 1000.0)], clean_env()))  # fmt: skip
        return commands

    return Server("litserve", command, lambda m: f"http://127.0.0.1:{ports[m]}/predict", json_bodies=True)


# ---- load --------------------------------------------------------------------------------------------------------


@dataclass
class Point:
    throughput: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int


def run_wrk(url: str, body: Path, content_type: str, concurrency: int, duration: float) -> Point:
    env = {**os.environ, "BODY_FILE": str(body), "CONTENT_TYPE": content_type}
    command = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--timeout", "30s",
               "-s", str(HERE / "post.lua"), url]  # fmt: skip
    output = subprocess.run(command, capture_output=True, text=True, env=env, check=True, timeout=duration + 120).stdout
    line = next(line for line in output.splitlines() if line.startswith("WRK_JSON "))
    data = json.loads(line[len("WRK_JSON ") :])
    errors = sum(data[k] for k in ("connect", "read", "write", "status", "timeout"))
    return Point(
        throughput=data["requests"] / (data["duration_us"] / 1e6),
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        requests=data["requests"],
        errors=errors,
    )


def run_python_load(url: str, body: Path, content_type: str, concurrency: int, duration: float) -> Point:
    """Fallback when wrk is missing (the smoke run): threads with keep-alive connections."""
    import http.client
    import threading
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    payload = body.read_bytes()
    latencies: list[float] = []
    errors = [0]
    stop_at = time.monotonic() + duration

    def worker() -> None:
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                conn.request("POST", parts.path, payload, {"Content-Type": content_type})
                response = conn.getresponse()
                response.read()
                ok = response.status == 200
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
                ok = False
            latencies.append(time.perf_counter() - started)
            if not ok:
                errors[0] += 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    ordered = sorted(latencies) or [0.0]
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return Point(len(latencies) / elapsed, p50, p99, len(latencies), errors[0])


def load(server: Server, assets: Path, model: str, concurrency: int, duration: float) -> Point:
    runner = run_wrk if shutil.which("wrk") else run_python_load
    return runner(server.url_for(model), server.body(assets, model), server.content_type(model), concurrency, duration)


# ---- in-process limit ----------------------------------------------------------------------------------------------

IN_PROCESS = r"""
import io, json, sys, time
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
from preprocess import preprocess
model_path, kind, raw_path = sys.argv[2], sys.argv[3], sys.argv[4]
threads, batch, seconds, form = int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]), sys.argv[8]
torch.set_num_threads(threads)
model = torch.jit.load(model_path).eval()
if form == "frozen":
    model = torch.jit.optimize_for_inference(torch.jit.freeze(model))
raw = open(raw_path, "rb").read()
done = 0
with torch.inference_mode():
    for _ in range(3):
        model(torch.from_numpy(np.stack([preprocess(raw, kind)] * batch)))
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        model(torch.from_numpy(np.stack([preprocess(raw, kind) for _ in range(batch)]))).argmax(1)
        done += batch
print(json.dumps({"throughput": done / (time.perf_counter() - start)}))
"""


IN_PROCESS_ONNX = r"""
import json, sys, time
import numpy as np, onnxruntime as ort
model_path, names_path, raw_path = sys.argv[1], sys.argv[2], sys.argv[3]
batch, seconds = int(sys.argv[4]), float(sys.argv[5])
options = ort.SessionOptions()
options.intra_op_num_threads = options.inter_op_num_threads = 1
session = ort.InferenceSession(model_path, options)
features = json.load(open(names_path))
name = session.get_inputs()[0].name
raw = open(raw_path, "rb").read()
done = 0
start = time.perf_counter()
while time.perf_counter() - start < seconds:
    rows = [[row[f] for f in features] for row in (json.loads(raw) for _ in range(batch))]
    labels, probabilities = session.run(None, {name: np.asarray(rows, dtype=np.float32)})
    answers = [json.dumps({"label": str(l), "probabilities": {str(k): float(v) for k, v in p.items()}}).encode()
               for l, p in zip(labels, probabilities)]
    done += batch
print(json.dumps({"throughput": done / (time.perf_counter() - start)}))
"""


def in_process_limit(
    assets: Path, model: str, threads: int, batch: int, seconds: float, form: str = "plain", processes: int = 1
) -> float:
    """Requests/s of the per-request work without a server, summed over ``processes`` running at once: for the image
    models the preprocessing and forward pass (``form`` "frozen" is the form modelserve may use), for iris the JSON
    parse, ONNX Runtime and the JSON answer."""
    if model == "iris":
        command = [str(PYTHON), "-W", "ignore", "-c", IN_PROCESS_ONNX, str(assets / "iris.onnx"),
                   str(assets / "feature_names.json"), str(assets / "iris.json"), str(batch), str(seconds)]  # fmt: skip
    else:
        command = [str(PYTHON), "-W", "ignore", "-c", IN_PROCESS, str(HERE / "handlers"), str(assets / f"{model}.pt"),
                   model, str(assets / INPUTS[model][0]), str(threads), str(batch), str(seconds), form]  # fmt: skip
    runs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=clean_env())
        for _ in range(processes)
    ]
    total = 0.0
    for run in runs:
        output, _ = run.communicate(timeout=seconds + 120)
        if run.returncode != 0:
            raise RuntimeError(f"in-process measurement of {model} failed (exit {run.returncode})")
        total += float(json.loads(output.strip().splitlines()[-1])["throughput"])
    return total


# ---- the run -----------------------------------------------------------------------------------------------------


def check_answers(
    servers: list[Server], assets: Path, models: Sequence[str] = tuple(MODEL_CONFIG)
) -> dict[str, dict[str, Any]]:
    answers: dict[str, dict[str, Any]] = {}
    for server in servers:
        answers[server.name] = {}
        for model in models:
            status, body = server.post(assets, model)
            if status != 200:
                raise RuntimeError(f"{server.name} answered {status} for {model}: {body[:200]!r}")
            value = json.loads(body)
            # the top class of an image, the label of the iris row (probabilities differ in rounding only)
            answers[server.name][model] = value.get("class", value.get("label")) if isinstance(value, dict) else value
    reference = answers[servers[0].name]
    for name, got in answers.items():
        if got != reference:
            raise RuntimeError(f"answers differ: {servers[0].name} {reference} vs {name} {got}")
    return answers


SWEEP = (1, 4, 8, 16, 32, 64)


def measure_server(
    server: Server,
    assets: Path,
    duration: float,
    workloads: dict[str, tuple[str, str, int]],
    record: dict[str, Any],
    sweep: dict[str, Any] | None = None,
) -> None:
    ready = server.start(assets, list(MODEL_CONFIG))
    try:
        for model in MODEL_CONFIG:  # warm-up, not counted
            load(server, assets, model, 4, min(4.0, duration))
        pss, rss = server.memory()
        record.setdefault("ready_s", []).append(ready)
        record.setdefault("pss_bytes", []).append(pss)
        record.setdefault("rss_bytes", []).append(rss)
        pids = [p.pid for p in server.processes]
        for label, (model, _, concurrency) in workloads.items():
            front_before, workers_before = tree_cpu(pids)
            point = load(server, assets, model, concurrency, duration)
            front_after, workers_after = tree_cpu(pids)
            served = max(point.requests, 1)
            entry = {
                **point.__dict__,
                "front_cpu_ms_per_request": (front_after - front_before) * 1000 / served,
                "worker_cpu_ms_per_request": (workers_after - workers_before) * 1000 / served,
            }
            record.setdefault(label, []).append(entry)
            front, workers = entry["front_cpu_ms_per_request"], entry["worker_cpu_ms_per_request"]
            log(f"  {server.name:10s} {label:8s} {point.throughput:8.1f} req/s  p50 {point.p50_ms:7.2f} ms  "
                f"p99 {point.p99_ms:7.2f} ms  errors {point.errors}  CPU ms/req front {front:.3f} "
                f"workers {workers:.3f}")  # fmt: skip
        if sweep is not None:
            for concurrency in SWEEP:
                point = load(server, assets, "convnet", concurrency, max(2.0, duration / 2))
                sweep[str(concurrency)] = point.__dict__
            log(f"  {server.name:10s} sweep " + ", ".join(f"c={c}: {p['throughput']:.0f}/s" for c, p in sweep.items()))
    finally:
        server.stop()


def median_point(points: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(p[key] for p in points) for key in points[0]}


def summarize(raw: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for name, record in raw.items():
        entry: dict[str, Any] = {
            "ready_s": statistics.median(record["ready_s"]),
            "pss_mb": statistics.median(record["pss_bytes"]) / 1e6,
            "rss_mb": statistics.median(record["rss_bytes"]) / 1e6,
        }
        for label in WORKLOADS:
            if label in record:
                entry[label] = median_point(record[label])
        summary[name] = entry
    return summary


def scaling(assets: Path, duration: float) -> dict[str, Any]:
    """modelserve alone: start and memory with 1/5/20 copies of W1, a batch size sweep, memory over 100k requests."""
    results: dict[str, Any] = {"models": {}, "batch_size": {}, "soak": {}, "plain_forms": {}}
    for copies in (1, 5, 20):
        names = ["convnet"] if copies == 1 else [f"convnet{i}" for i in range(copies)]
        server = modelserve_server(modelserve_store(assets, copies), names, tag=f"modelserve-{copies}")
        try:
            ready = server.start(assets, names)
            pss, _ = server.memory()
        finally:
            server.stop()
        results["models"][copies] = {"ready_s": ready, "pss_mb": pss / 1e6}
        log(f"  scaling: {copies:2d} models ready in {ready:.2f} s, PSS {pss / 1e6:.0f} MB")
    for batch in (1, 8, 32):
        server = modelserve_server(modelserve_store(assets, 1, batch), ["convnet"], tag=f"modelserve-b{batch}")
        try:
            server.start(assets, ["convnet"])
            load(server, assets, "convnet", 64, min(2.0, duration))
            point = load(server, assets, "convnet", 64, duration)
        finally:
            server.stop()
        results["batch_size"][batch] = point.__dict__
        log(f"  batch {batch:2d} c=64: {point.throughput:.0f} req/s p99 {point.p99_ms:.1f} ms errors {point.errors}")
    # what the optimized model form is worth: the same W1 c=32 point with `optimize: false` in both archives
    for optimize in (False, True):
        store = modelserve_store(assets, 1, optimize=optimize)
        server = modelserve_server(store, list(MODEL_CONFIG), tag=f"modelserve-optimize-{optimize}")
        try:
            server.start(assets, list(MODEL_CONFIG))
            load(server, assets, "convnet", 32, min(2.0, duration))
            point = load(server, assets, "convnet", 32, duration)
        finally:
            server.stop()
        results["plain_forms"]["optimize" if optimize else "plain"] = point.__dict__
        log(f"  optimize {optimize}: W1 c=32 {point.throughput:.0f} req/s p99 {point.p99_ms:.1f} ms")
    server = modelserve_server(modelserve_store(assets, 1), list(MODEL_CONFIG), tag="modelserve-soak")
    try:
        server.start(assets, list(MODEL_CONFIG))
        served = 0
        for target in (10_000, 100_000):
            while served < target:
                served += load(server, assets, "convnet", 32, 5).requests
            pss, _ = server.memory()
            results["soak"][target] = {"requests": served, "pss_mb": pss / 1e6}
            log(f"  after {served} requests: PSS {pss / 1e6:.0f} MB")
    finally:
        server.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: modelserve only, a few seconds")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured point")
    parser.add_argument("--rounds", type=int, default=3, help="A B C A B C rounds")
    parser.add_argument("--servers", default="modelserve,torchserve,litserve")
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument(
        "--scaling-from", type=Path, metavar="RUN.json", help="report the scaling figures of that earlier run, named"
    )
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--baseline", metavar="COMMIT", help="also run modelserve at COMMIT, alternating with it")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.rounds, args.servers, args.skip_scaling = 1.0, 1, "modelserve", True
    WORK.mkdir(exist_ok=True)
    assets = ensure_assets()
    wanted = args.servers.split(",")
    modes = ("same",) if args.quick else SETTINGS_MODES
    factories: dict[str, dict[str, Callable[[], Server]]] = {mode: {} for mode in modes}
    for mode in modes:
        factories[mode]["modelserve"] = lambda mode=mode: modelserve_server(  # type: ignore[misc]
            modelserve_store(assets, settings=mode), list(MODEL_CONFIG), f"modelserve-{mode}"
        )
    if "torchserve" in wanted:
        ts_venv = ensure_venv(
            "torchserve",
            ["torchserve==0.12.0", "torch-model-archiver==0.12.0", "pillow", "numpy", "pyyaml", "onnxruntime==1.32.0"],
        )
        for mode in modes:
            ts_store = torchserve_store(assets, ts_venv, mode)
            factories[mode]["torchserve"] = lambda store=ts_store: torchserve_server(store, ts_venv)  # type: ignore[misc]
    if "litserve" in wanted:
        lit_venv = ensure_venv("litserve", ["litserve==0.2.19", "pillow", "numpy", "onnxruntime==1.32.0"])
        for mode in modes:
            factories[mode]["litserve"] = lambda mode=mode: litserve_server(assets, lit_venv, mode)  # type: ignore[misc]
    if args.baseline:
        tag, source = baseline_checkout(args.baseline)
        for mode in modes:
            factories[mode][tag] = lambda mode=mode: modelserve_server(  # type: ignore[misc]
                modelserve_store(assets, settings=mode), list(MODEL_CONFIG), f"{tag}-{mode}", source
            )
        wanted.insert(wanted.index("modelserve") + 1 if "modelserve" in wanted else 0, tag)
    names = [n for n in wanted if n in factories["same"]]
    log("checking that every server gives the same answers")
    answers: dict[str, Any] = {}
    for name in names:
        server = factories["same"][name]()
        server.start(assets, list(MODEL_CONFIG))
        try:
            answers[name] = check_answers([server], assets)[server.name]
        finally:
            server.stop()
    reference = answers[names[0]]
    if any(a != reference for a in answers.values()):
        raise SystemExit(f"servers disagree: {answers}")
    raw: dict[str, dict[str, dict[str, Any]]] = {mode: {name: {} for name in names} for mode in modes}
    sweeps: dict[str, dict[str, Any]] = {name: {} for name in names}
    # the W2 limit is measured in every round, between the servers' turns, so it sees the same machine they do
    # (this machine's speed drifts by up to 1.5x within minutes); the median over rounds is the limit
    seconds = max(3.0, args.duration / 2)
    w2_limits = {
        "W2 2 threads batch 1": ("resnet18", 2, 1, "plain"),
        "W2 2 threads batch 8": ("resnet18", 2, 8, "plain"),
        "W2 2 threads batch 1, frozen": ("resnet18", 2, 1, "frozen"),
        "W2 2 threads batch 8, frozen": ("resnet18", 2, 8, "frozen"),
        "W2 2 processes x 1 thread batch 8, frozen": ("resnet18", 1, 8, "frozen"),
    }
    per_round: dict[str, list[float]] = {label: [] for label in w2_limits}
    for round_index in range(args.rounds):
        # every other round runs the servers in reverse order (A B C, C B A, ...): no server is always first
        # both settings in every round, each server's turn under one after the other (same, defaults, ...)
        for name in names if round_index % 2 == 0 else names[::-1]:
            for mode in modes:
                log(f"round {round_index + 1}: {name} ({mode} settings)")
                sweep = sweeps[name] if round_index == 0 and mode == "same" and not args.quick else None
                measure_server(factories[mode][name](), assets, args.duration, WORKLOADS, raw[mode][name], sweep)
        if not args.quick:
            for label, (model, threads, batch, form) in w2_limits.items():
                processes = 2 if "2 processes" in label else 1
                per_round[label].append(in_process_limit(assets, model, threads, batch, seconds, form, processes))
            log("  in-process W2: " + ", ".join(f"{k} {v[-1]:.1f}/s" for k, v in per_round.items()))
    limits = {}
    if not args.quick:
        log("in-process limit")
        limits = {
            "W1 1 thread batch 1": in_process_limit(assets, "convnet", 1, 1, seconds),
            "W1 1 thread batch 8": in_process_limit(assets, "convnet", 1, 8, seconds),
            "W1 1 thread batch 8, frozen": in_process_limit(assets, "convnet", 1, 8, seconds, "frozen"),
            "W3 1 process batch 16 (JSON in and out, ONNX Runtime)": in_process_limit(assets, "iris", 1, 16, seconds),
            "W3 2 processes batch 16": in_process_limit(assets, "iris", 1, 16, seconds, processes=2),
        }
        limits.update({label: statistics.median(values) for label, values in per_round.items()})
        for label, value in limits.items():
            log(f"  {label}: {value:.1f} /s")
    summary = summarize(raw["same"])
    result = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, check=False
        ).stdout.strip(),
        "machine": machine(),
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "model_config": MODEL_CONFIG,
            "litserve_defaults": {
                "workers": LITSERVE_DEFAULTS[0],
                "max_batch_size": LITSERVE_DEFAULTS[1],
                "batch_timeout_ms": LITSERVE_DEFAULTS[2],
            },
            "load_generator": "wrk" if shutil.which("wrk") else "python threads",
        },
        "answers": answers,
        "raw": raw["same"],
        "summary": summary,
        "raw_defaults": raw.get("defaults", {}),
        "summary_defaults": summarize(raw["defaults"]) if "defaults" in raw else {},
        "in_process_limit": limits,
        "in_process_w2_per_round": per_round,
        "sweep": {name: points for name, points in sweeps.items() if points},
        "scaling": {} if args.skip_scaling else scaling(assets, args.duration),
    }
    if args.scaling_from is not None:  # modelserve-alone figures of an earlier run, named as such in the report
        result["scaling"] = json.loads(args.scaling_from.read_text())["scaling"]
        result["scaling_from"] = args.scaling_from.name
    RESULTS.mkdir(exist_ok=True)
    output = args.output or RESULTS / ("quick.json" if args.quick else f"run-{time.strftime('%Y%m%d-%H%M%S')}.json")
    output.write_text(json.dumps(result, indent=2))
    log(f"results in {output}")
    if not args.quick:
        from report import write_report

        write_report(result, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
