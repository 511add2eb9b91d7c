"""The picture of a run: throughput, latency, stream lag and replicas, CPU and RSS over time."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["plot_report", "plot_storage"]


def plot_report(report: dict[str, Any], path: Path) -> bool:
    """Throughput, latency, lag and replicas, CPU and RSS over time, as one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return False
    cols = report["series"]["columns"]
    rows = report["series"]["rows"]
    col = {name: [r[cols.index(name)] for r in rows] for name in cols}
    samples = report.get("samples", [])
    fig, axes = plt.subplots(5, 1, figsize=(11, 14), sharex=True)
    title = f"{report['scenario']}: {report.get('description', '')}"
    if report.get("provisional"):
        title += f" [{report['provisional']}]"
    fig.suptitle(title)
    ax = axes[0]
    ax.plot(col["t_s"], col["offered"], label="offered/s", lw=1)
    ax.plot(col["t_s"], col["accepted"], label="accepted (2xx)/s", lw=1)
    ax.plot(col["t_s"], col["emails"], label="e-mails received/s", lw=1)
    ax.set_ylabel("per second")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[1]
    ax.plot(col["t_s"], col["post_p99_ms"], label="POST p99", lw=1)
    ax.plot(col["t_s"], col["e2e_p50_ms"], label="e2e p50 (by arrival)", lw=1)
    ax.plot(col["t_s"], col["e2e_p99_ms"], label="e2e p99 (by arrival)", lw=1)
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.legend(loc="upper left", fontsize=8)
    ts = [s["t_s"] for s in samples]
    ax = axes[2]
    ax.plot(ts, [s.get("lag", math.nan) for s in samples], label="lag (unread)", lw=1)
    ax.plot(ts, [s.get("pending", math.nan) for s in samples], label="pending", lw=1)
    ax.set_ylabel("entries")
    ax.legend(loc="upper left", fontsize=8)
    twin = ax.twinx()
    twin.step(
        ts,
        [s.get("replicas", 0) for s in samples],
        color="black",
        lw=1,
        where="post",
        label="notifier replicas",
    )
    twin.set_ylabel("replicas")
    twin.set_ylim(0, max([s.get("replicas", 0) for s in samples] + [1]) + 1)
    twin.legend(loc="upper right", fontsize=8)
    ax = axes[3]
    names = sorted({n for s in samples for n in s.get("cores", {})})
    for name in names:
        ax.plot(ts, [s.get("cores", {}).get(name, math.nan) for s in samples], label=name, lw=1)
    ax.plot(
        ts,
        [s.get("machine_cores", math.nan) for s in samples],
        label="machine",
        lw=1,
        color="black",
        ls=":",
    )
    ax.set_ylabel("CPU (cores)")
    ax.legend(loc="upper left", fontsize=7, ncol=4)
    ax = axes[4]
    with_rss = [s for s in samples if "rss_mb" in s]
    for name in sorted({n for s in with_rss for n in s["rss_mb"]}):
        ax.plot(
            [s["t_s"] for s in with_rss],
            [s["rss_mb"].get(name, math.nan) for s in with_rss],
            label=name,
            lw=1,
        )
    ax.set_ylabel("RSS (MiB)")
    ax.set_xlabel("seconds since the system was ready")
    ax.legend(loc="upper left", fontsize=7, ncol=4)
    window = report.get("window", {})
    t0 = report["series"]["t0_unix"]
    for axis in axes:
        if "down_unix" in window and "up_unix" in window:
            axis.axvspan(window["down_unix"] - t0, window["up_unix"] - t0, color="red", alpha=0.1)
        for step in report.get("steps", []):
            axis.axvline(step["start_s"], color="grey", lw=0.5, ls="--")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def plot_storage(report: dict[str, Any], path: Path) -> bool:
    """Redis memory and keys, and each table's bytes, over the run, as one PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
        return False
    samples = report["storage_samples"]
    ts = [s["t_s"] for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(11, 11), sharex=True)
    fig.suptitle(f"{report['scenario']}: {report.get('description', '')}")
    ax = axes[0]
    ax.plot(ts, [s["redis"]["used_memory"] / 2**20 for s in samples], label="used_memory", lw=1)
    ax.set_ylabel("Redis MiB")
    ax.legend(loc="upper left", fontsize=8)
    twin = ax.twinx()
    twin.plot(
        ts, [s["redis"]["non_stream_keys"] for s in samples], color="black", lw=1, ls=":",
        label="keys that are not streams",
    )  # fmt: skip
    twin.plot(
        ts, [s["redis"]["longest_stream"] for s in samples], color="grey", lw=1, ls="--",
        label="longest stream (entries)",
    )  # fmt: skip
    twin.legend(loc="upper right", fontsize=8)
    tables = sorted({t for s in samples for t in s["postgres"]["tables"]})
    for ax, kept in ((axes[1], True), (axes[2], False)):
        for table in tables:
            if (table in ("orders", "order_items")) != kept:
                continue
            tables_of = [s["postgres"]["tables"] for s in samples]
            sizes = [t.get(table, {}).get("bytes", 0) / 2**20 for t in tables_of]
            ax.plot(ts, sizes, label=table, lw=1)
        ax.set_ylabel("MiB (with indexes)")
        ax.legend(loc="upper left", fontsize=8)
    axes[1].set_title("kept: business data", fontsize=9)
    axes[2].set_title("with a retention", fontsize=9)
    axes[2].set_xlabel("seconds since the system was ready")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
