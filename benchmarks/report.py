"""Turn one benchmark run into the results table of benchmarks/README.md and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
START, END = "<!-- results:start -->", "<!-- results:end -->"
WORKLOAD_LABELS = ("W1 c=1", "W1 c=32", "W2 c=8", "W3 c=32")
W2_LIMIT = "W2 2 processes x 1 thread batch 8, frozen"


def _ratio(mine: float, theirs: float) -> str:
    return f"{mine / theirs:.2f}x" if theirs else "n/a"


def _check(ok: bool) -> str:
    return "met" if ok else "NOT met"


def targets(
    summary: dict[str, Any], limits: dict[str, float], defaults: dict[str, Any] | None = None
) -> list[tuple[str, str, str, bool]]:
    """(figure, target, measured, met) for every target of BENCHMARKS.md that this run can judge: the same settings
    for every server, except the one target on each server's defaults."""
    ms, ts, lit = summary.get("modelserve"), summary.get("torchserve"), summary.get("litserve")
    rows: list[tuple[str, str, str, bool]] = []
    if not ms:
        return rows

    def ratio_row(figure: str, mine: float, theirs: float, wanted: float, at_most: bool = False) -> None:
        ratio = mine / theirs if theirs else float("inf")
        met = ratio <= wanted if at_most else ratio >= wanted
        rows.append((figure, f"{'<=' if at_most else '>='} {wanted:g}x", f"{ratio:.2f}x", met))

    if ts:
        ratio_row("W1 c=32 throughput vs TorchServe", ms["W1 c=32"]["throughput"], ts["W1 c=32"]["throughput"], 2.0)
        ratio_row("W1 c=1 p99 vs TorchServe", ms["W1 c=1"]["p99_ms"], ts["W1 c=1"]["p99_ms"], 0.2, at_most=True)
        ratio_row("W2 c=8 throughput vs TorchServe", ms["W2 c=8"]["throughput"], ts["W2 c=8"]["throughput"], 1.1)
        if "W3 c=32" in ms and "W3 c=32" in ts:
            ratio_row("W3 c=32 throughput vs TorchServe", ms["W3 c=32"]["throughput"], ts["W3 c=32"]["throughput"], 3.0)
        ratio_row("start to READY vs TorchServe", ms["ready_s"], ts["ready_s"], 0.6, at_most=True)
        ratio_row("memory (PSS, whole tree) vs TorchServe", ms["pss_mb"], ts["pss_mb"], 0.6, at_most=True)
    if lit:
        ratio_row("W1 c=32 throughput vs LitServe", ms["W1 c=32"]["throughput"], lit["W1 c=32"]["throughput"], 2.5)
        ratio_row("W2 c=8 throughput vs LitServe", ms["W2 c=8"]["throughput"], lit["W2 c=8"]["throughput"], 1.1)
    d_ms, d_ts = (defaults or {}).get("modelserve"), (defaults or {}).get("torchserve")
    if d_ms and d_ts:
        ratio_row("W1 c=32 vs TorchServe, each server's defaults", d_ms["W1 c=32"]["throughput"],
                  d_ts["W1 c=32"]["throughput"], 3.0)  # fmt: skip
    # the limit for the same cores as the issue defines it: two processes at once, frozen model, batch 8
    limit = limits.get(W2_LIMIT) or max((v for k, v in limits.items() if k.startswith("W2")), default=0.0)
    if limit:
        ratio = ms["W2 c=8"]["throughput"] / limit
        figure = "W2 c=8 throughput vs in-process limit" + (
            " (2 processes, frozen, batch 8)" if W2_LIMIT in limits else ""
        )
        rows.append((figure, ">= 0.90", f"{ratio:.2f}", ratio >= 0.9))
    errors = sum(int(ms[w]["errors"]) for w in WORKLOAD_LABELS if w in ms)
    rows.append(("errors under load (modelserve)", "0", str(errors), errors == 0))
    return rows


def _workload_table(summary: dict[str, Any], title: str) -> list[str]:
    """Throughput, latency and CPU per request (front end + workers) of every server, per workload."""
    names = list(summary)
    lines = [
        f"{title}; cells: req/s (p50 / p99 ms), then CPU ms per request, front end + workers:",
        "",
        "| workload | " + " | ".join(names) + " | modelserve / TorchServe |",
        "| --- | " + " | ".join("---" for _ in names) + " | --- |",
    ]
    for label in WORKLOAD_LABELS:
        if any(label not in summary[n] for n in names):
            continue
        cells = []
        for n in names:
            point = summary[n][label]
            cpu = ""
            if "front_cpu_ms_per_request" in point:
                cpu = f"; {point['front_cpu_ms_per_request']:.2f} + {point['worker_cpu_ms_per_request']:.2f}"
            cells.append(f"{point['throughput']:.0f} ({point['p50_ms']:.1f} / {point['p99_ms']:.1f}){cpu}")
        ratio = (
            _ratio(summary["modelserve"][label]["throughput"], summary["torchserve"][label]["throughput"])
            if "torchserve" in summary and "modelserve" in summary
            else "n/a"
        )
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
    return lines


def markdown(result: dict[str, Any], json_name: str) -> str:
    summary = result["summary"]
    machine = result["machine"]
    names = list(summary)
    lines = [
        f"Run of {result['date']} at commit `{result['commit']}` on {machine['cpus']} cores, "
        f"{machine['memory_gb']} GB, Python {machine['python']} ({machine['platform']}); load from "
        f"{result['settings']['load_generator']}, {result['settings']['duration_s']:g} s per point, "
        f"{result['settings']['rounds']} alternating rounds, medians. Raw data: `results/{json_name}`.",
        "",
    ]
    lines += _workload_table(summary, "Same settings (every server: the per-model workers, batch size and delay)")
    defaults = result.get("summary_defaults") or {}
    if defaults:
        lines += [""]
        lines += _workload_table(
            defaults, "Each server's defaults (no model-config.yaml; LitServe in its idiomatic setup)"
        )
    lines += ["", "| | " + " | ".join(names) + " | |", "| --- | " + " | ".join("---" for _ in names) + " | --- |"]
    lines.append("| start to READY (s) | " + " | ".join(f"{summary[n]['ready_s']:.2f}" for n in names) + " | |")
    lines.append(
        "| memory PSS / RSS (MB) | "
        + " | ".join(f"{summary[n]['pss_mb']:.0f} / {summary[n]['rss_mb']:.0f}" for n in names)
        + " | |"
    )
    if result["in_process_limit"]:
        lines += ["", "In-process limit (no server, same preprocessing, same run; W2 figures are medians of one "
                  "measurement per round, taken between the servers' turns): "
                  + "; ".join(f"{k}: {v:.0f}/s" for k, v in result["in_process_limit"].items()) + "."]  # fmt: skip
    rows = targets(summary, result["in_process_limit"], result.get("summary_defaults"))
    if rows:
        lines += ["", "| target | wanted | measured | |", "| --- | --- | --- | --- |"]
        lines += [f"| {figure} | {want} | {got} | {_check(ok)} |" for figure, want, got, ok in rows]
    scale = result.get("scaling") or {}
    if scale:
        source = f", from the earlier run `results/{result['scaling_from']}`" if result.get("scaling_from") else ""
        lines += ["", f"Scaling (modelserve alone{source}):", "",
                  "| loaded W1 copies | start to READY (s) | PSS (MB) |", "| --- | --- | --- |"]  # fmt: skip
        lines += [f"| {k} | {v['ready_s']:.2f} | {v['pss_mb']:.0f} |" for k, v in scale["models"].items()]
        lines += ["", "| batch size (W1, c=64) | req/s | p99 ms | errors |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {k} | {v['throughput']:.0f} | {v['p99_ms']:.1f} | {v['errors']} |"
            for k, v in scale["batch_size"].items()
        ]
        lines += ["", "| after requests | PSS (MB) |", "| --- | --- |"]
        lines += [f"| {v['requests']} | {v['pss_mb']:.0f} |" for v in scale["soak"].values()]
        forms = scale.get("plain_forms") or {}
        if forms:
            lines += ["", "| W1 c=32, both models loaded | req/s | p99 ms |", "| --- | --- | --- |"]
            labels = {"plain": "`optimize: false` (plain TorchScript)", "optimize": "default (optimized form allowed)"}
            lines += [f"| {labels.get(k, k)} | {v['throughput']:.0f} | {v['p99_ms']:.1f} |" for k, v in forms.items()]
    sweep = result.get("sweep") or {}
    if sweep:
        lines += ["", "![throughput and p99 against concurrency](results/latency.png)"]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> bool:
    sweep = result.get("sweep") or {}
    if not sweep:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, points in sweep.items():
        levels = sorted(int(c) for c in points)
        left.plot(levels, [points[str(c)]["throughput"] for c in levels], marker="o", label=name)
        right.plot(levels, [points[str(c)]["p99_ms"] for c in levels], marker="o", label=name)
    left.set(xlabel="concurrency", ylabel="requests/s", title="W1 throughput", xscale="log")
    right.set(xlabel="concurrency", ylabel="p99 latency (ms)", title="W1 p99 latency", xscale="log", yscale="log")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def write_report(result: dict[str, Any], json_path: Path) -> None:
    plot(result, HERE / "results" / "latency.png")
    readme = HERE / "README.md"
    text = readme.read_text()
    table = markdown(result, json_path.name)
    if START in text and END in text:
        before, rest = text.split(START, 1)
        _, after = rest.split(END, 1)
        text = f"{before}{START}\n{table}\n{END}{after}"
    else:
        text += f"\n{START}\n{table}\n{END}\n"
    readme.write_text(text)
