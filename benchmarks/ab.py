"""Before/after on the request path: modelserve at this checkout and at another commit, interleaved.

    .venv/bin/python benchmarks/ab.py --baseline COMMIT [--windows 8] [--seconds 5] [--workloads "W2 c=8"]

Both servers run at once with the benchmark's two models (the same archives, the same settings); the load then
alternates between them in short windows (A B B A A B ...) for every workload, so the machine's drift, which on this
kind of machine reaches 2x within minutes, falls on both alike. Load comes from wrk, so the client does not share the
servers' Python. For each window the CPU seconds of each server's parent process and of its workers are read, which
gives the CPU per request of both, split between the front end and the workers. Medians over the windows are
printed as a table and written to ``results/ab-<date>.json``.
"""

from __future__ import annotations

import argparse
import statistics

import psutil
from run import (
    MODEL_CONFIG,
    WORKLOADS,
    baseline_checkout,
    ensure_assets,
    log,
    modelserve_server,
    modelserve_store,
    run_wrk,
    write_results,
)


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """User+system CPU seconds of the parent process and of all its descendants."""
    parent = psutil.Process(pid)
    times = parent.cpu_times()
    own = times.user + times.system
    children = 0.0
    for child in parent.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.Error:
            continue
        children += child_times.user + child_times.system
    return own, children


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--baseline", required=True, metavar="COMMIT")
    parser.add_argument("--windows", type=int, default=8, help="load windows per server and workload")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of one window")
    parser.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma-separated, of: {', '.join(WORKLOADS)} (default all)"
    )
    args = parser.parse_args()
    chosen = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in chosen if w not in WORKLOADS]
    if unknown or not chosen:
        parser.error(f"unknown workload(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(WORKLOADS)}")
    assets = ensure_assets()
    store = modelserve_store(assets)
    tag, source = baseline_checkout(args.baseline)
    servers = {
        "after": modelserve_server(store, list(MODEL_CONFIG), "modelserve-after"),
        "before": modelserve_server(store, list(MODEL_CONFIG), "modelserve-before", source),
    }
    for server in servers.values():
        server.start(assets, list(MODEL_CONFIG))
    results: dict[str, dict[str, list[dict[str, float]]]] = {w: {"before": [], "after": []} for w in chosen}
    try:
        for workload in chosen:
            model, input_file, concurrency = WORKLOADS[workload]
            for server in servers.values():  # the same short warm-up for both
                run_wrk(server.url_for(model), assets / input_file, "application/octet-stream", concurrency, 3)
            for window in range(args.windows):
                order = ["before", "after"] if window % 2 == 0 else ["after", "before"]
                for which in order:
                    server = servers[which]
                    pid = server.processes[0].pid
                    own_before, children_before = _cpu_seconds(pid)
                    point = run_wrk(
                        server.url_for(model), assets / input_file, "application/octet-stream", concurrency,
                        args.seconds,
                    )  # fmt: skip
                    own_after, children_after = _cpu_seconds(pid)
                    requests = max(point.requests, 1)
                    results[workload][which].append({
                        "throughput": point.throughput, "p50_ms": point.p50_ms, "p99_ms": point.p99_ms,
                        "errors": float(point.errors),
                        "parent_cpu_ms_per_request": (own_after - own_before) * 1000 / requests,
                        "worker_cpu_ms_per_request": (children_after - children_before) * 1000 / requests,
                    })  # fmt: skip
                log(f"{workload} window {window + 1}: " + ", ".join(
                    f"{w} {results[workload][w][-1]['throughput']:.0f}/s" for w in ("before", "after")
                ))  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()
    summary = {
        workload: {
            which: {key: statistics.median(p[key] for p in points) for key in points[0]}
            for which, points in by_server.items()
        }
        for workload, by_server in results.items()
    }
    lines = [
        f"before = {tag}, after = this checkout; medians of {args.windows} interleaved {args.seconds:g} s windows",
        "",
        "| workload | req/s before | req/s after | after/before | p50 ms before / after | p99 ms before / after "
        "| parent CPU ms/req before / after | worker CPU ms/req before / after |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for workload, by_server in summary.items():
        b, a = by_server["before"], by_server["after"]
        lines.append(
            f"| {workload} | {b['throughput']:.0f} | {a['throughput']:.0f} | {a['throughput'] / b['throughput']:.2f} "
            f"| {b['p50_ms']:.2f} / {a['p50_ms']:.2f} | {b['p99_ms']:.2f} / {a['p99_ms']:.2f} "
            f"| {b['parent_cpu_ms_per_request']:.3f} / {a['parent_cpu_ms_per_request']:.3f} "
            f"| {b['worker_cpu_ms_per_request']:.3f} / {a['worker_cpu_ms_per_request']:.3f} |"
        )
    print("\n".join(lines))
    write_results("ab", {
        "baseline": tag, "windows": args.windows, "seconds": args.seconds, "summary": summary,
        "windows_raw": results, "table": lines,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
