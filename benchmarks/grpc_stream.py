"""gRPC and streaming: W1 over modelserve's gRPC, its HTTP and MLServer 1.7's gRPC; streamed pieces over HTTP and gRPC.

    .venv/bin/python benchmarks/grpc_stream.py            # the full run, about 8 minutes on 2 cores
    .venv/bin/python benchmarks/grpc_stream.py --quick    # a few seconds: modelserve only, no MLServer install

W1 is the MNIST ConvNet of ``run.py``'s assets exported to ONNX here (FP32 [N, 1, 28, 28], dynamic batch), served by
modelserve's built-in ``tensor`` handler and by an MLServer custom runtime (``handlers/mlserver_onnx.py``) with the
same workers, batch size, batch delay and ONNX Runtime threads. Load comes from separate client processes
(``tritonclient.grpc.aio`` and ``tritonclient.http.aio``, binary tensors), the servers take turns (A B C, C B A,
...), every answer is checked against ONNX Runtime run directly before timing and during it. The streaming half
serves ``handlers/stream_pieces.py`` (100 pieces per request, each stamped with ``time.monotonic_ns()`` right before
its ``yield``) and reads it over HTTP chunked transfer, TorchServe's ``StreamPredictions`` and the OIP's
``ModelStreamInfer``. Results: ``results/grpc-<date>.json`` and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from run import (
    HERE,
    PYTHON,
    REPO,
    WORK,
    Server,
    clean_env,
    ensure_assets,
    ensure_venv,
    free_port,
    log,
    machine,
    modelserve_server,
    tree_cpu,
    write_results,
)

W1 = "w1"
STREAM = "stream"
PIECES = 100
# the same per-model settings for every server: modelserve's model-config.yaml, MLServer's model-settings.json
WORKERS, BATCH_SIZE, BATCH_DELAY_MS = 1, 16, 2.0
W1_CONFIG = (
    f"minWorkers: {WORKERS}\nmaxWorkers: {WORKERS}\nbatchSize: {BATCH_SIZE}\nmaxBatchDelay: {BATCH_DELAY_MS:g}\n"
)
# the streaming model: one worker; streams of one batch take turns in it, so c=8 batches them up to 8
STREAM_CONFIG = "minWorkers: 1\nmaxWorkers: 1\nbatchSize: 8\nmaxBatchDelay: 2\n"
CORES = len(os.sched_getaffinity(0))
# modelserve's default thread policy: the cores shared by all workers (W1 is the only model of its server)
THREADS = max(1, CORES // WORKERS)
MLSERVER_PACKAGES = [
    "mlserver==1.7.1",
    "onnxruntime==1.32.0",
    "numpy==2.4.6",
    "grpcio==1.85.3",
    "protobuf==6.33.6",
    "uvloop==0.21.0",  # 0.22+ breaks MLServer 1.7.1's parallel workers (get_event_loop), SeldonIO/MLServer#2286
]
CONCURRENCY = 32
CLIENT_PROCESSES = 2  # x 16 tasks each for c=32
STREAM_POINTS = {
    # label: (client kind, concurrency)
    "HTTP chunked c=1": ("stream-http", 1),
    "HTTP chunked c=8": ("stream-http", 8),
    "StreamPredictions c=1": ("stream-ts", 1),
    "StreamPredictions c=8": ("stream-ts", 8),
    "ModelStreamInfer c=1": ("stream-oip", 1),
    "ModelStreamInfer c=8": ("stream-oip", 8),
}
# under load: batches of other sizes may round differently in the last bits
RTOL, ATOL = 1e-4, 1e-5


# ---- model, archives, MLServer's repository ------------------------------------------------------------------------


def export_onnx(assets: Path) -> Path:
    """The ConvNet of run.py's assets (its seeded state_dict) as ONNX, batch dimension dynamic."""
    path = assets / "convnet.onnx"
    if path.is_file():
        return path
    log("exporting the ConvNet to ONNX")
    import torch

    sys.path.insert(0, str(REPO / "examples" / "mnist"))
    from convnet import ConvNet

    model = ConvNet().eval()
    model.load_state_dict(torch.load(assets / "convnet.pth", weights_only=True))
    temporary = path.with_suffix(".tmp")
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, 28, 28),),
        str(temporary),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    temporary.rename(path)
    return path


def w1_input(assets: Path) -> np.ndarray:
    """digit.png through the benchmark's shared preprocessing: FP32 [1, 1, 28, 28]."""
    sys.path.insert(0, str(HERE / "handlers"))
    from preprocess import preprocess

    return preprocess((assets / "digit.png").read_bytes(), "convnet")[None]


def reference(onnx: Path, x: np.ndarray) -> np.ndarray:
    """W1's answer from ONNX Runtime run directly."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": x})[0])


def modelserve_store(onnx: Path, threads: int | None = None) -> Path:
    """W1 (the built-in ``tensor`` handler on the .onnx file) and the streaming model; ``threads`` set in W1's
    model-config.yaml (``intraOpThreads``), else modelserve's default policy picks them."""
    from modelserve.archive.packer import PackRequest, pack_archive

    store = WORK / f"store-grpc-{threads or 'default'}"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    w1_config = W1_CONFIG + (f"intraOpThreads: {threads}\n" if threads else "")
    for name, handler, config, serialized in (
        (W1, "tensor", w1_config, onnx),
        (STREAM, str(HERE / "handlers" / "stream_pieces.py"), STREAM_CONFIG, None),
    ):
        config_path = store / f".{name}-config.yaml"
        config_path.write_text(config)
        pack_archive(
            PackRequest(
                model_name=name,
                handler=handler,
                serialized_file=serialized,
                config_file=config_path,
                export_path=store,
                archive_format="zip-store",
            )
        )
    return store


def mlserver_repository(onnx: Path, threads: int) -> Path:
    """MLServer's model repository: W1 with the custom ONNX Runtime runtime and its model-settings.json."""
    root = WORK / f"mlserver-repository-{threads}"
    model_dir = root / W1
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx, model_dir / "model.onnx")
    shutil.copy(HERE / "handlers" / "mlserver_onnx.py", model_dir / "mlserver_onnx.py")
    settings = {
        "name": W1,
        "implementation": "mlserver_onnx.OnnxRuntimeModel",
        # adaptive batching with the same batch size and delay as modelserve's batchSize / maxBatchDelay
        "max_batch_size": BATCH_SIZE,
        "max_batch_time": BATCH_DELAY_MS / 1000.0,
        "parameters": {"uri": "./model.onnx", "extra": {"intra_op_threads": threads}},
    }
    (model_dir / "model-settings.json").write_text(json.dumps(settings, indent=2))
    return root


# ---- servers ------------------------------------------------------------------------------------------------------


def http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status) == 200
    except OSError:
        return False


def grpc_ready(address: str, model: str) -> bool:
    import tritonclient.grpc as grpcclient

    try:
        client = grpcclient.InferenceServerClient(address)
    except Exception:
        return False
    try:
        return bool(client.is_model_ready(model, client_timeout=5))
    except Exception:
        return False
    finally:
        client.close()


def modelserve(store: Path, model: str, tag: str) -> Server:
    """modelserve with gRPC on free loopback ports; ready when the model answers both HTTP and gRPC."""
    server = modelserve_server(store, [model], tag, grpc=True)
    ports = server.ports
    server.probe = lambda m: (
        http_ready(f"http://127.0.0.1:{ports['inference']}/v2/models/{m}/ready")
        and grpc_ready(f"127.0.0.1:{ports['grpc_inference']}", m)
    )
    return server


def mlserver(venv: Path, repository: Path) -> Server:
    """MLServer on loopback (HTTP, gRPC and metrics on free ports), one parallel worker (its default)."""
    ports = {key: free_port() for key in ("http", "grpc", "metrics")}

    def command() -> list[tuple[list[str], dict[str, str]]]:
        settings = {
            "host": "127.0.0.1",
            "http_port": ports["http"],
            "grpc_port": ports["grpc"],
            "metrics_port": ports["metrics"],
            "parallel_workers": WORKERS,
        }
        (repository / "settings.json").write_text(json.dumps(settings, indent=2))
        env = clean_env(PATH=f"{venv / 'bin'}:{os.environ.get('PATH', '')}")
        env.pop("PYTHONPATH", None)
        return [([str(venv / "bin" / "mlserver"), "start", str(repository)], env)]

    return Server(
        "mlserver",
        command,
        lambda m: f"http://127.0.0.1:{ports['http']}/v2/models/{m}/infer",
        probe=lambda m: grpc_ready(f"127.0.0.1:{ports['grpc']}", m),
        ports={"grpc_inference": ports["grpc"], "inference": ports["http"], "metrics": ports["metrics"]},
    )


def first_piece_histogram(server: Server) -> dict[str, float]:
    """modelserve_stream_first_piece_seconds of the streaming model (cumulative buckets by bound, plus sum, count)."""
    url = f"http://127.0.0.1:{server.ports['metrics']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    pattern = re.compile(r"^modelserve_stream_first_piece_seconds_(bucket|sum|count)\{([^}]*)\} (\S+)$")
    for line in text.splitlines():
        match = pattern.match(line)
        if match is None or f'model_name="{STREAM}"' not in match.group(2):
            continue
        kind, labels, value = match.groups()
        if kind == "bucket":
            bound = re.search(r'le="([^"]+)"', labels)
            if bound is not None:
                values[bound.group(1)] = float(value)
        else:
            values[kind] = float(value)
    return values


def histogram_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """The first-piece histogram over one point: how many, their mean, the share within 0.5, 1 and 2.5 ms."""
    count = after.get("count", 0.0) - before.get("count", 0.0)
    if count <= 0:
        return {"parent_first_piece_count": 0}
    delta: dict[str, float] = {
        "parent_first_piece_count": count,
        "parent_first_piece_mean_ms": (after.get("sum", 0.0) - before.get("sum", 0.0)) / count * 1000,
    }
    for bound in ("0.0005", "0.001", "0.0025"):
        delta[f"parent_first_piece_within_{float(bound) * 1000:g}ms"] = (
            after.get(bound, 0.0) - before.get(bound, 0.0)
        ) / count
    return delta


# ---- the load: client processes ---------------------------------------------------------------------------------


def _stamp() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _until(moment: float) -> None:
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


async def _meter(start_at: float, stop_at: float, cpu: list[float]) -> None:
    """The client's own CPU seconds at the measured window's start and end, appended to ``cpu``."""
    await _until(start_at)
    cpu.append(_stamp())
    await _until(stop_at)
    cpu.append(_stamp())


async def _w1_load(spec: dict[str, Any], start_at: float, stop_at: float) -> dict[str, Any]:
    """``tasks`` loops of one W1 request at a time over one client (one gRPC channel, or one aiohttp pool)."""
    x = np.load(spec["input"])
    expected = np.load(spec["expected"])
    latencies: list[int] = []
    counts = {"errors": 0, "wrong": 0, "warm": 0}
    if spec["kind"] == "grpc":
        import tritonclient.grpc.aio as client_module
    else:
        import tritonclient.http.aio as client_module
    client = client_module.InferenceServerClient(
        spec["address"], **({"conn_limit": spec["tasks"]} if spec["kind"] == "http" else {})
    )
    tensor = client_module.InferInput("input", list(x.shape), "FP32")
    if spec["kind"] == "grpc":
        tensor.set_data_from_numpy(x)  # raw_input_contents
    else:
        tensor.set_data_from_numpy(x, binary_data=True)  # the OIP binary extension; outputs come back binary

    async def loop() -> None:
        while True:
            began = time.monotonic()
            if began >= stop_at:
                return
            try:
                result = await client.infer(spec["model"], [tensor])
                ok = np.allclose(result.as_numpy("logits"), expected, rtol=RTOL, atol=ATOL)
            except Exception:
                ok, error = False, True
            else:
                error = False
            ended = time.monotonic()
            if began < start_at or ended > stop_at:
                counts["warm"] += 1
                continue
            if error:
                counts["errors"] += 1
            elif not ok:
                counts["wrong"] += 1
            latencies.append(round((ended - began) * 1e6))

    cpu: list[float] = []
    try:
        await asyncio.gather(_meter(start_at, stop_at, cpu), *(loop() for _ in range(spec["tasks"])))
    finally:
        await client.close()
    return {"latencies_us": latencies, **counts, "client_cpu_s": cpu[1] - cpu[0]}


class _Pieces:
    """What one stream client records: per request the time to its first piece and per piece the time from the
    handler's yield to its arrival here (both in µs), and what was wrong."""

    def __init__(self, start_at: float, stop_at: float) -> None:
        self.start_at, self.stop_at = start_at, stop_at
        self.first_us: list[int] = []  # request sent -> first piece here
        self.reach_us: list[int] = []  # request sent -> the handler yields its first piece
        self.first_hop_us: list[int] = []  # the first piece: handler's yield -> here
        self.piece_us: list[int] = []  # every piece: handler's yield -> here
        self.streams = self.pieces = self.errors = self.wrong = 0

    def request(self, sent_ns: int, arrivals: list[tuple[int, int, int]], error: bool) -> None:
        """One request: ``arrivals`` of (index, yield ns, arrival ns)."""
        now = time.monotonic()
        if sent_ns / 1e9 < self.start_at or now > self.stop_at:
            return
        if error:
            self.errors += 1
            return
        if [index for index, _, _ in arrivals] != list(range(PIECES)):
            self.wrong += 1
            return
        self.streams += 1
        self.pieces += len(arrivals)
        _, first_yield, first_arrival = arrivals[0]
        self.first_us.append(round((first_arrival - sent_ns) / 1000))
        self.reach_us.append(round((first_yield - sent_ns) / 1000))
        self.first_hop_us.append(round((first_arrival - first_yield) / 1000))
        self.piece_us.extend(round((arrival - yielded) / 1000) for _, yielded, arrival in arrivals)


def _lines(buffer: bytes, arrival: int, arrivals: list[tuple[int, int, int]]) -> bytes:
    """Complete ``index ns`` lines of ``buffer`` into ``arrivals``; the incomplete rest."""
    *complete, rest = buffer.split(b"\n")
    for line in complete:
        index, yielded = line.split()
        arrivals.append((int(index), int(yielded), arrival))
    return rest


async def _stream_load(spec: dict[str, Any], start_at: float, stop_at: float) -> dict[str, Any]:
    record = _Pieces(start_at, stop_at)
    kind, address, model = spec["kind"], spec["address"], spec["model"]
    body = str(PIECES).encode()
    closers: list[Callable[[], Any]] = []
    one: Callable[[], Any]
    if kind == "stream-http":
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=spec["tasks"]))
        closers.append(session.close)
        url = f"http://{address}/predictions/{model}"

        async def one_http() -> None:
            arrivals: list[tuple[int, int, int]] = []
            sent = time.monotonic_ns()
            error = False
            try:
                async with session.post(url, data=body, headers={"Content-Type": "text/plain"}) as response:
                    rest = b""
                    async for chunk in response.content.iter_any():
                        rest = _lines(rest + chunk, time.monotonic_ns(), arrivals)
                    error = response.status != 200
            except (aiohttp.ClientError, ValueError):
                error = True
            record.request(sent, arrivals, error)

        one = one_http
    elif kind == "stream-ts":
        import grpc

        from modelserve.server.protos import inference_pb2, inference_pb2_grpc

        channel = grpc.aio.insecure_channel(address)
        closers.append(channel.close)
        stub = inference_pb2_grpc.InferenceAPIsServiceStub(channel)
        request = inference_pb2.PredictionsRequest(model_name=model, input={"data": body})

        async def one_ts() -> None:
            arrivals: list[tuple[int, int, int]] = []
            sent = time.monotonic_ns()
            error = False
            try:
                async for response in stub.StreamPredictions(request, timeout=60):
                    _lines(response.prediction, time.monotonic_ns(), arrivals)
            except (grpc.RpcError, ValueError):
                error = True
            record.request(sent, arrivals, error)

        one = one_ts
    else:  # stream-oip: one ModelStreamInfer stream per task, one request at a time on it, 100 responses each
        import tritonclient.grpc.aio as grpcclient

        client = grpcclient.InferenceServerClient(address)
        closers.append(client.close)
        count = grpcclient.InferInput("count", [1], "INT32")
        count.set_data_from_numpy(np.array([PIECES], dtype=np.int32))

        async def one_oip_stream() -> None:
            """A task's whole stream: requests in turn until the end of the load."""
            queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

            async def requests() -> Any:
                while (item := await queue.get()) is not None:
                    yield item

            responses = client.stream_infer(requests())
            try:
                while time.monotonic() < stop_at:
                    arrivals: list[tuple[int, int, int]] = []
                    sent = time.monotonic_ns()
                    await queue.put({"model_name": model, "inputs": [count]})
                    error = False
                    while len(arrivals) < PIECES:
                        result, failure = await responses.__anext__()
                        if failure is not None:
                            error = True
                            break
                        index, yielded = (int(v) for v in result.as_numpy("piece"))
                        arrivals.append((index, yielded, time.monotonic_ns()))
                    record.request(sent, arrivals, error)
                    if error:
                        break
            finally:
                await queue.put(None)
                responses.cancel()

        one = one_oip_stream

    async def loop() -> None:
        while time.monotonic() < stop_at:
            await one()

    cpu: list[float] = []
    try:
        await asyncio.gather(_meter(start_at, stop_at, cpu), *(loop() for _ in range(spec["tasks"])))
    finally:
        for close in closers:
            await close()
    return {
        **{k: v for k, v in vars(record).items() if k not in ("start_at", "stop_at")},
        "client_cpu_s": cpu[1] - cpu[0],
    }


def client_main() -> int:
    """A load process: its spec on the first line of stdin; READY; the window (start, stop) on the next line; its
    figures into the spec's result_file."""
    spec = json.loads(sys.stdin.readline())
    # imported before READY, not inside the window
    import tritonclient.grpc.aio
    import tritonclient.http.aio  # noqa: F401

    print("READY", flush=True)
    start_at, stop_at = json.loads(sys.stdin.readline())
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    runner = _w1_load if spec["kind"] in ("grpc", "http") else _stream_load
    result = asyncio.run(runner(spec, start_at, stop_at))
    # to a file: the event loop may have left stdout non-blocking, and the figures run past a pipe's buffer
    Path(spec["result_file"]).write_text(json.dumps(result))
    return 0


def run_clients(
    specs: list[dict[str, Any]],
    warmup: float,
    duration: float,
    pids: list[int],
    probe: Callable[[], dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Start the client processes, run the load, and read the server's CPU (front end, workers) over the window, and
    ``probe`` (a server-side reading) at its start and end."""
    env = clean_env(PYTHONPATH=str(REPO))
    folder = WORK / "clients"
    folder.mkdir(exist_ok=True)
    specs = [{**spec, "result_file": str(folder / f"client-{index}.json")} for index, spec in enumerate(specs)]
    for spec in specs:
        Path(spec["result_file"]).unlink(missing_ok=True)
    clients = [
        subprocess.Popen(
            [str(PYTHON), str(Path(__file__).resolve()), "--client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in specs
    ]
    try:
        for client, spec in zip(clients, specs, strict=True):
            assert client.stdin is not None and client.stdout is not None
            client.stdin.write(json.dumps(spec) + "\n")
            client.stdin.flush()
        for client in clients:
            assert client.stdout is not None
            if client.stdout.readline().strip() != "READY":
                raise RuntimeError("a load client did not start")
        start_at = time.monotonic() + 0.2 + warmup
        stop_at = start_at + duration
        for client in clients:
            assert client.stdin is not None
            client.stdin.write(json.dumps([start_at, stop_at]) + "\n")
            client.stdin.flush()
        time.sleep(max(0.0, start_at - time.monotonic()))
        before = tree_cpu(pids)
        probed = [probe()] if probe is not None else []
        time.sleep(max(0.0, stop_at - time.monotonic()))
        after = tree_cpu(pids)
        if probe is not None:
            probed.append(probe())
        results = []
        for client, spec in zip(clients, specs, strict=True):
            client.communicate(timeout=120)
            if client.returncode != 0:
                raise RuntimeError(f"a load client failed (exit {client.returncode})")
            results.append(json.loads(Path(spec["result_file"]).read_text()))
    finally:
        for client in clients:
            if client.poll() is None:
                client.kill()
                client.wait()
    merged: dict[str, Any] = {
        "probed": probed,
        "duration_s": duration,
        "server_front_cpu_s": after[0] - before[0],
        "server_worker_cpu_s": after[1] - before[1],
    }
    for result in results:
        for key, value in result.items():
            merged[key] = merged.get(key, [] if isinstance(value, list) else 0) + value
    return merged


def percentile(values: list[int], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] / 1000.0  # µs -> ms


def mean_ms(values: list[int]) -> float:
    return statistics.fmean(values) / 1000.0 if values else 0.0


def w1_point(raw: dict[str, Any]) -> dict[str, Any]:
    served = max(len(raw["latencies_us"]), 1)
    return {
        "throughput": len(raw["latencies_us"]) / raw["duration_s"],
        "p50_ms": percentile(raw["latencies_us"], 0.50),
        "p99_ms": percentile(raw["latencies_us"], 0.99),
        "requests": len(raw["latencies_us"]),
        "errors": raw["errors"],
        "wrong_answers": raw["wrong"],
        "front_cpu_ms_per_request": raw["server_front_cpu_s"] * 1000 / served,
        "worker_cpu_ms_per_request": raw["server_worker_cpu_s"] * 1000 / served,
        "client_cpu_ms_per_request": raw["client_cpu_s"] * 1000 / served,
        "client_cpu_cores": raw["client_cpu_s"] / raw["duration_s"],
    }


def stream_point(raw: dict[str, Any]) -> dict[str, Any]:
    pieces = max(raw["pieces"], 1)
    return {
        "streams_per_s": raw["streams"] / raw["duration_s"],
        "chunks_per_s": raw["pieces"] / raw["duration_s"],
        "streams": raw["streams"],
        "chunks": raw["pieces"],
        "errors": raw["errors"],
        "wrong_streams": raw["wrong"],
        "first_chunk_p50_ms": percentile(raw["first_us"], 0.50),
        "first_chunk_p99_ms": percentile(raw["first_us"], 0.99),
        "send_to_first_yield_p50_ms": percentile(raw["reach_us"], 0.50),
        "send_to_first_yield_mean_ms": mean_ms(raw["reach_us"]),
        "first_yield_to_client_mean_ms": mean_ms(raw["first_hop_us"]),
        "first_yield_to_client_p50_ms": percentile(raw["first_hop_us"], 0.50),
        "first_yield_to_client_p99_ms": percentile(raw["first_hop_us"], 0.99),
        "piece_yield_to_client_p50_ms": percentile(raw["piece_us"], 0.50),
        "piece_yield_to_client_p99_ms": percentile(raw["piece_us"], 0.99),
        "front_cpu_us_per_chunk": raw["server_front_cpu_s"] * 1e6 / pieces,
        "worker_cpu_us_per_chunk": raw["server_worker_cpu_s"] * 1e6 / pieces,
        "client_cpu_us_per_chunk": raw["client_cpu_s"] * 1e6 / pieces,
        "client_cpu_cores": raw["client_cpu_s"] / raw["duration_s"],
    }


def split_tasks(concurrency: int, processes: int) -> list[int]:
    processes = max(1, min(processes, concurrency))
    return [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]


# ---- the run -----------------------------------------------------------------------------------------------------


def check_w1(name: str, server: Server, x: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
    """One W1 request through the protocol of ``name``, compared with ONNX Runtime run directly."""
    if "HTTP" in name:
        import tritonclient.http as client_module

        address = f"127.0.0.1:{server.ports['inference']}"
        tensor = client_module.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
    else:
        import tritonclient.grpc as client_module

        address = f"127.0.0.1:{server.ports['grpc_inference']}"
        tensor = client_module.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
    client = client_module.InferenceServerClient(address)
    try:
        got = np.asarray(client.infer(W1, [tensor]).as_numpy("logits"))
    finally:
        client.close()
    difference = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
        raise RuntimeError(f"{name}: answer {got} differs from ONNX Runtime's {expected}")
    return {"max_abs_difference": difference, "class": int(got.argmax())}


def measure_w1(name: str, server: Server, files: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    kind = "http" if "HTTP" in name else "grpc"
    address = f"127.0.0.1:{server.ports['inference' if kind == 'http' else 'grpc_inference']}"
    specs = [
        {"kind": kind, "address": address, "model": W1, "tasks": tasks, **files}
        for tasks in split_tasks(CONCURRENCY, args.client_processes)
    ]
    raw = run_clients(specs, args.warmup, args.duration, [p.pid for p in server.processes])
    return w1_point(raw)


def measure_streams(server: Server, labels: list[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    points = {}
    pids = [p.pid for p in server.processes]
    for label in labels:
        kind, concurrency = STREAM_POINTS[label]
        port = server.ports["inference" if kind == "stream-http" else "grpc_inference"]
        specs = [
            {"kind": kind, "address": f"127.0.0.1:{port}", "model": STREAM, "tasks": tasks}
            for tasks in split_tasks(concurrency, args.client_processes)
        ]
        # over HTTP the parent measures too (arrival -> first piece relayed), read at the window's start and end
        probe = (lambda: first_piece_histogram(server)) if kind == "stream-http" else None
        raw = run_clients(specs, args.stream_warmup, args.stream_duration, pids, probe)
        point = stream_point(raw)
        if raw["probed"]:
            point.update(histogram_delta(*raw["probed"]))
        points[label] = point
        log(
            f"  {label:22s} {point['chunks_per_s']:8.0f} chunks/s  first chunk p50 {point['first_chunk_p50_ms']:.2f} "
            f"ms  yield->client p50 {point['first_yield_to_client_p50_ms']:.3f} ms (first) "
            f"{point['piece_yield_to_client_p50_ms']:.3f} ms (every piece)  errors {point['errors']} "
            f"wrong {point['wrong_streams']}"
        )
    return points


def median_of(points: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for key, value in points[0].items():
        if isinstance(value, (int, float)):
            summary[key] = statistics.median(p[key] for p in points)
    return summary


def parent_line(label: str, point: dict[str, Any]) -> str:
    """What the parent's first-piece histogram says over the point's window."""
    if not point.get("parent_first_piece_count"):
        return f"{label}: no first-piece histogram"
    return (
        f"{label}, in the parent (modelserve_stream_first_piece_seconds): request arrival -> first piece relayed, "
        f"mean {point['parent_first_piece_mean_ms']:.3f} ms, within 0.5 / 1 / 2.5 ms: "
        f"{point['parent_first_piece_within_0.5ms']:.0%} / {point['parent_first_piece_within_1ms']:.0%} / "
        f"{point['parent_first_piece_within_2.5ms']:.0%}; the client's send -> the handler's first yield, mean "
        f"{point['send_to_first_yield_mean_ms']:.3f} ms"
    )


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


def w1_table(summary: dict[str, dict[str, Any]]) -> str:
    rows = [
        "| server, protocol (W1 c=32) | req/s | p50 ms | p99 ms | server CPU ms/req, parent + workers | "
        "client CPU ms/req (cores) | errors / wrong |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, p in summary.items():
        rows.append(
            f"| {name} | {p['throughput']:.0f} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | "
            f"{p['front_cpu_ms_per_request']:.3f} + {p['worker_cpu_ms_per_request']:.3f} | "
            f"{p['client_cpu_ms_per_request']:.3f} ({p['client_cpu_cores']:.2f}) | "
            f"{p['errors']:.0f} / {p['wrong_answers']:.0f} |"
        )
    return "\n".join(rows)


def stream_table(summary: dict[str, dict[str, Any]]) -> str:
    rows = [
        "| stream (100 pieces) | chunks/s | streams/s | first chunk from send p50 / p99 ms | "
        "first yield -> client p50 / p99 ms | every piece yield -> client p50 / p99 ms | "
        "server CPU us/chunk, parent + worker | client CPU us/chunk | errors / wrong |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, p in summary.items():
        rows.append(
            f"| {name} | {p['chunks_per_s']:.0f} | {p['streams_per_s']:.1f} | "
            f"{p['first_chunk_p50_ms']:.2f} / {p['first_chunk_p99_ms']:.2f} | "
            f"{p['first_yield_to_client_p50_ms']:.3f} / {p['first_yield_to_client_p99_ms']:.3f} | "
            f"{p['piece_yield_to_client_p50_ms']:.3f} / {p['piece_yield_to_client_p99_ms']:.3f} | "
            f"{p['front_cpu_us_per_chunk']:.1f} + {p['worker_cpu_us_per_chunk']:.1f} | "
            f"{p['client_cpu_us_per_chunk']:.1f} | {p['errors']:.0f} / {p['wrong_streams']:.0f} |"
        )
    return "\n".join(rows)


def variant_names(threads: int | None, mlserver_too: bool) -> list[str]:
    """The W1 servers of one thread setting: None is modelserve's default policy (and MLServer given as many)."""
    suffix = "" if threads is None else f", {threads} thread{'s' if threads > 1 else ''}"
    names = [f"modelserve gRPC{suffix}", f"modelserve HTTP{suffix}"]
    return [*names, f"MLServer gRPC{suffix}"] if mlserver_too else names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a few seconds: modelserve only, no MLServer install")
    parser.add_argument("--rounds", type=int, default=3, help="A B C, C B A, ... rounds")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measured W1 point")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of load before each W1 point")
    parser.add_argument("--stream-duration", type=float, default=5.0, help="seconds per measured stream point")
    parser.add_argument("--stream-warmup", type=float, default=1.0)
    parser.add_argument("--client-processes", type=int, default=CLIENT_PROCESSES)
    parser.add_argument(
        "--threads", default="default,1",
        help="ONNX Runtime intra-op thread settings to run W1 with, each for every server: 'default' (modelserve's "
        "policy, MLServer given as many) and/or numbers",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.client:
        return client_main()
    if args.quick:
        args.rounds, args.duration, args.warmup, args.stream_duration, args.stream_warmup = 1, 1.5, 0.5, 1.0, 0.3
        args.threads = "default"
    settings = [None if t == "default" else int(t) for t in args.threads.split(",")]
    # the commit the servers start from (read now: a commit during the run does not rename the run)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, check=False
    ).stdout.strip()
    WORK.mkdir(exist_ok=True)
    assets = ensure_assets()
    onnx = export_onnx(assets)
    x = w1_input(assets)
    expected = reference(onnx, x)
    files = {"input": str(WORK / "w1-input.npy"), "expected": str(WORK / "w1-expected.npy")}
    np.save(files["input"], x)
    np.save(files["expected"], expected)
    venv = None if args.quick else ensure_venv("mlserver", MLSERVER_PACKAGES, torch=None)
    factories: dict[str, Callable[[], Server]] = {}
    stores = {}
    for threads in settings:
        store = stores[threads] = modelserve_store(onnx, threads)
        grpc_name, http_name, *mlserver_name = variant_names(threads, venv is not None)
        factories[grpc_name] = lambda store=store: modelserve(store, W1, "modelserve-grpc")  # type: ignore[misc]
        factories[http_name] = lambda store=store: modelserve(store, W1, "modelserve-http")  # type: ignore[misc]
        if venv is not None:
            repository = mlserver_repository(onnx, threads or THREADS)
            factories[mlserver_name[0]] = lambda repository=repository: mlserver(venv, repository)  # type: ignore[misc]
    stream_store = stores[settings[0]]  # every store has the streaming model, with the same settings
    names = list(factories)
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in [*names, *STREAM_POINTS]}
    answers: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    ready: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(args.rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            log(f"round {round_index + 1}: {name}")
            server = factories[name]()
            ready[name].append(server.start(assets, [W1]))
            try:
                answers[name].append(check_w1(name, server, x, expected))  # before any timing
                point = measure_w1(name, server, files, args)
            finally:
                server.stop()
            raw[name].append(point)
            log(
                f"  {name:16s} {point['throughput']:8.1f} req/s  p50 {point['p50_ms']:6.2f} ms  p99 "
                f"{point['p99_ms']:6.2f} ms  errors {point['errors']} wrong {point['wrong_answers']}  CPU ms/req "
                f"parent {point['front_cpu_ms_per_request']:.3f} workers {point['worker_cpu_ms_per_request']:.3f} "
                f"client {point['client_cpu_ms_per_request']:.3f}"
            )
        log(f"round {round_index + 1}: modelserve streaming")
        labels = list(STREAM_POINTS) if round_index % 2 == 0 else list(STREAM_POINTS)[::-1]
        server = modelserve(stream_store, STREAM, "modelserve-stream")
        server.start(assets, [STREAM])
        try:
            for label, point in measure_streams(server, labels, args).items():
                raw[label].append(point)
        finally:
            server.stop()
    summary = {name: median_of(points) for name, points in raw.items()}
    w1 = {name: summary[name] for name in names}
    streams = {label: summary[label] for label in STREAM_POINTS}
    ratios: dict[str, Any] = {}
    targets: list[tuple[str, str, float | None]] = []
    for threads in settings:
        grpc_name, http_name, *mlserver_name = variant_names(threads, venv is not None)
        pairs = [(grpc_name, http_name, ">= 1.0x")] + [(grpc_name, m, ">= 2x") for m in mlserver_name]
        for over, under, wanted in pairs:
            label = f"{over} / {under}"
            ratios[label] = ratio(w1[over]["throughput"], w1[under]["throughput"])
            ratios[f"{label}, per round"] = [
                ratio(a["throughput"], b["throughput"]) for a, b in zip(raw[over], raw[under], strict=True)
            ]
            if threads is None:
                targets.append((f"W1 c=32 throughput, {label}", wanted, ratios[label]))
        if threads is None and not mlserver_name:
            targets.append((f"W1 c=32 throughput, {grpc_name} / MLServer gRPC", ">= 2x", None))
    targets.append((
        "first chunk: handler's yield -> client, HTTP c=1, p50 (an upper bound of yield -> parent)", "<= 1 ms",
        streams["HTTP chunked c=1"]["first_yield_to_client_p50_ms"],
    ))  # fmt: skip
    result = {
        "commit": commit,
        "machine": machine(),
        "settings": {
            "quick": args.quick,
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "stream_duration_s": args.stream_duration,
            "stream_warmup_s": args.stream_warmup,
            "concurrency": CONCURRENCY,
            "client_processes": args.client_processes,
            "pieces_per_stream": PIECES,
            "model_config": W1_CONFIG,
            "stream_model_config": STREAM_CONFIG,
            "onnxruntime_intra_op_threads": {"default": THREADS, **{str(t): t for t in settings if t is not None}},
            "mlserver_packages": MLSERVER_PACKAGES if venv is not None else [],
            "clients": "tritonclient.grpc.aio (raw_input_contents), tritonclient.http.aio (binary_data=True); "
            "streams: aiohttp, grpc.aio with modelserve's TorchServe stubs, tritonclient.grpc.aio "
            "stream_infer",
        },
        "answers": answers,
        "ready_s": {name: statistics.median(values) for name, values in ready.items()},
        "raw": raw,
        "summary": {"w1": w1, "streams": streams},
        "ratios": ratios,
        "targets": [{"target": t, "wanted": w, "measured": m} for t, w, m in targets],
    }
    output = write_results("grpc", result, args.output)
    print(f"\nW1 (ConvNet as ONNX, c={CONCURRENCY}), medians of {args.rounds} round(s):\n")
    print(w1_table(w1))
    print(f"\nStreams of {PIECES} pieces (modelserve), medians of {args.rounds} round(s):\n")
    print(stream_table(streams))
    print()
    for label in ("HTTP chunked c=1", "HTTP chunked c=8"):
        print(parent_line(label, streams[label]))
    print("\n| target | wanted | measured |\n| --- | --- | --- |")
    for label, wanted, measured in targets:
        shown = "-" if measured is None else (f"{measured:.3f} ms" if "ms" in wanted else f"{measured:.2f}x")
        print(f"| {label} | {wanted} | {shown} |")
    print(f"\nresults: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
