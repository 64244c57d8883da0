"""Turn one benchmark run into the results table of benchmarks/README.md and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _ratio(mine: float, theirs: float) -> str:
    return f"{mine / theirs:.2f}x" if theirs else "n/a"


def _check(ok: bool) -> str:
    return "met" if ok else "NOT met"


def targets(summary: dict[str, Any], limits: dict[str, float]) -> list[tuple[str, str, str, bool]]:
    """(figure, target, measured, met) for every target of BENCHMARKS.md that this run can judge."""
    ms, ts, lit = summary.get("modelserve"), summary.get("torchserve"), summary.get("litserve")
    rows: list[tuple[str, str, str, bool]] = []
    if not ms:
        return rows
    if ts:
        ratio = ms["W1 c=32"]["throughput"] / ts["W1 c=32"]["throughput"]
        rows.append(("W1 c=32 throughput vs TorchServe", ">= 3.0x", f"{ratio:.2f}x", ratio >= 3.0))
        ratio = ms["W1 c=1"]["p99_ms"] / ts["W1 c=1"]["p99_ms"]
        rows.append(("W1 c=1 p99 vs TorchServe", "<= 0.2x", f"{ratio:.2f}x", ratio <= 0.2))
        ratio = ms["W2 c=8"]["throughput"] / ts["W2 c=8"]["throughput"]
        rows.append(("W2 c=8 throughput vs TorchServe", ">= 1.0x", f"{ratio:.2f}x", ratio >= 1.0))
        ratio = ms["ready_s"] / ts["ready_s"]
        rows.append(("start to READY vs TorchServe", "<= 0.6x", f"{ratio:.2f}x", ratio <= 0.6))
        ratio = ms["pss_mb"] / ts["pss_mb"]
        rows.append(("memory (PSS, whole tree) vs TorchServe", "<= 0.6x", f"{ratio:.2f}x", ratio <= 0.6))
    if lit:
        ratio = ms["W1 c=32"]["throughput"] / lit["W1 c=32"]["throughput"]
        rows.append(("W1 c=32 throughput vs LitServe", ">= 2.0x", f"{ratio:.2f}x", ratio >= 2.0))
        ratio = ms["W2 c=8"]["throughput"] / lit["W2 c=8"]["throughput"]
        rows.append(("W2 c=8 throughput vs LitServe", ">= 1.0x", f"{ratio:.2f}x", ratio >= 1.0))
    limit = max((v for k, v in limits.items() if k.startswith("W2")), default=0.0)
    if limit:
        ratio = ms["W2 c=8"]["throughput"] / limit
        rows.append(("W2 c=8 throughput vs in-process limit", ">= 0.90", f"{ratio:.2f}", ratio >= 0.9))
    errors = sum(int(p["errors"]) for w in ("W1 c=1", "W1 c=32", "W2 c=8") for p in [ms[w]])
    rows.append(("errors under load (modelserve)", "0", str(errors), errors == 0))
    return rows


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
        "| workload | " + " | ".join(f"{n} req/s (p50 / p99 ms)" for n in names) + " | modelserve / TorchServe |",
        "| --- | " + " | ".join("---" for _ in names) + " | --- |",
    ]
    for label in ("W1 c=1", "W1 c=32", "W2 c=8"):
        cells = []
        for n in names:
            point = summary[n][label]
            cells.append(f"{point['throughput']:.0f} ({point['p50_ms']:.1f} / {point['p99_ms']:.1f})")
        ratio = (
            _ratio(summary["modelserve"][label]["throughput"], summary["torchserve"][label]["throughput"])
            if "torchserve" in summary and "modelserve" in summary
            else "n/a"
        )
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {ratio} |")
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
    rows = targets(summary, result["in_process_limit"])
    if rows:
        lines += ["", "| target | wanted | measured | |", "| --- | --- | --- | --- |"]
        lines += [f"| {figure} | {want} | {got} | {_check(ok)} |" for figure, want, got, ok in rows]
    scale = result.get("scaling") or {}
    if scale:
        lines += ["", "Scaling (modelserve alone):", "", "| loaded W1 copies | start to READY (s) | PSS (MB) |",
                  "| --- | --- | --- |"]  # fmt: skip
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
