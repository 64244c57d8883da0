"""Ray Serve for ``ray_bench.py``: one Serve application per model on the same two-node loopback cluster that
modelserve's Ray backend gets (``ray_cluster.py``), set up as Ray Serve's documentation does it.

    python rayserve_app.py SPEC.json

SPEC names the status file, the GCS port, the Ray temp dir, the HTTP port, this directory and per model: the
TorchScript file, replicas, ``max_ongoing_requests``, ``num_cpus`` per replica, torch threads, and the batch size and
wait passed through ``user_config`` to ``@serve.batch`` (``reconfigure``, as the Serve docs tune batching), and
``access_log`` (default true: Serve's default of a log line per request in the proxy and the replica). Each
replica runs the same Pillow preprocessing as every server of the benchmark (``preprocess.py``), the forward pass
of the plain TorchScript model and the argmax; the answer is ``{"class": N}``. The HTTP proxy runs on the head only
(``proxy_location="HeadOnly"``: both nodes are this machine, one port), on 127.0.0.1. The status file gets
``cluster_up``, ``serve_up`` and ``deployed`` on ``time.monotonic()``; SIGTERM or SIGINT shuts it all down.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ray_cluster import LOOPBACK, start_cluster, wait_for_signal, write_status


def deployment_class() -> Any:
    import numpy as np
    import torch
    from ray import serve
    from starlette.requests import Request

    @serve.deployment
    class TopClass:
        def __init__(self, model_path: str, kind: str, handlers: str, threads: int) -> None:
            sys.path.insert(0, handlers)
            from preprocess import preprocess

            self.preprocess = preprocess
            self.kind = kind
            torch.set_num_threads(threads)
            self.model = torch.jit.load(model_path).eval()  # type: ignore[no-untyped-call]

        def reconfigure(self, config: dict[str, Any]) -> None:
            self.classify.set_max_batch_size(int(config["max_batch_size"]))  # type: ignore[attr-defined]
            self.classify.set_batch_wait_timeout_s(float(config["batch_wait_timeout_s"]))  # type: ignore[attr-defined]

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
        async def classify(self, bodies: list[bytes]) -> list[dict[str, int]]:
            batch = torch.from_numpy(np.stack([self.preprocess(body, self.kind) for body in bodies]))
            with torch.inference_mode():
                scores = self.model(batch)
            return [{"class": int(i)} for i in scores.argmax(dim=1)]

        async def __call__(self, request: Request) -> dict[str, int]:
            result: dict[str, int] = await self.classify(await request.body())
            return result

    return TopClass


def main() -> int:
    spec = json.loads(Path(sys.argv[1]).read_text())
    status = Path(spec["status"])
    cluster = start_cluster(int(spec["gcs_port"]), spec["temp_dir"])
    write_status(status, address=cluster.address, cluster_up=time.monotonic(), pid=os.getpid())
    try:
        import ray
        from ray import serve

        ray.init(address=cluster.address, _node_ip_address=LOOPBACK)
        # Serve's default logs every request (proxy and replica); the spec may turn that off, as Serve's docs allow
        logging = None if spec.get("access_log", True) else {"enable_access_log": False}
        serve.start(
            proxy_location="HeadOnly",
            http_options={"host": LOOPBACK, "port": int(spec["http_port"])},
            logging_config=logging,
        )
        write_status(status, serve_up=time.monotonic())
        top_class = deployment_class()
        for model, settings in spec["models"].items():
            app = top_class.options(
                name=model,
                num_replicas=int(settings["replicas"]),
                max_ongoing_requests=int(settings["max_ongoing_requests"]),
                ray_actor_options={"num_cpus": float(settings["num_cpus"])},
                logging_config=logging,
                user_config={
                    "max_batch_size": int(settings["max_batch_size"]),
                    "batch_wait_timeout_s": float(settings["batch_wait_timeout_s"]),
                },
            ).bind(settings["path"], settings["kind"], spec["handlers"], int(settings["threads"]))
            serve.run(app, name=model, route_prefix=f"/{model}")
        write_status(status, deployed=time.monotonic())
        wait_for_signal()
    finally:
        # the cluster goes with every actor in it: Serve's controller state needs no separate shutdown
        import ray

        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
