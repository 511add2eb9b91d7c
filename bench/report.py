"""A run's report: the common head of every JSON result, targets, the text summary printed at
the end, the files written (JSON and plots) and the medians over repeated runs."""

from __future__ import annotations

import json
import math
import os
import statistics
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from bench.cpu import format_cpu_table
from bench.monitor import machine
from bench.plots import plot_report, plot_storage
from bench.scenarios import RunOptions, Scenario
from bench.stack import git_revision

__all__ = [
    "RSS_LIMITS_MB",
    "base_report",
    "cpu_headline",
    "format_report",
    "medians",
    "memory_targets",
    "save_report",
    "target_row",
]

#: Processes whose memory the targets bound (MiB).
RSS_LIMITS_MB: Final = {"api": 200.0, "notifier": 150.0}


def base_report(scenario: Scenario, options: RunOptions, notifiers: int) -> dict[str, Any]:
    acme_env = {
        k: v for k, v in os.environ.items() if k.startswith(("ACME_", "OTEL_")) and "URL" not in k
    }
    return {
        "scenario": scenario.name,
        "description": scenario.description,
        "command": options.command,
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "git": git_revision(),
        "machine": machine(),
        "quiet": options.quiet,
        "provisional": options.quiet.get("label", "") or None,
        "config": {
            "rate_per_s": scenario.rate_per_s,
            "duration_s": scenario.duration_s,
            "notifiers": notifiers,
            "warmup_s": scenario.warmup_s,
            "connections": options.connections,
            "rss_every_s": scenario.rss_every_s,
            "env": acme_env,
        },
    }


def target_row(what: str, figure: Any, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"target": what, "figure": figure, "met": met, "note": note}


def cpu_headline(cpu: dict[str, Any], unit: str = "order") -> dict[str, float]:
    out = {f"cpu_ms_per_{unit}_total": cpu[f"tracked_ms_per_{unit}"]}
    for name, row in cpu["by_process"].items():
        out[f"cpu_ms_per_{unit}_{name}"] = row[f"cpu_ms_per_{unit}"]
    return out


def memory_targets(rss: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []
    for name, info in sorted(rss.items()):
        for prefix, limit in RSS_LIMITS_MB.items():
            if name.startswith(prefix):
                targets.append(
                    target_row(
                        f"{name} RSS < {limit:g} MB",
                        f"max {info['max_mb']:.0f} MB",
                        info["max_mb"] < limit,
                    )
                )
    return targets


# --- out: files and text ------------------------------------------------------------------


def save_report(report: dict[str, Any], out_dir: Path, plot: bool) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    path = out_dir / f"{report['scenario']}-{stamp}.json"
    if plot and report.get("series"):
        picture = path.with_suffix(".png")
        if plot_report(report, picture):
            report["plot"] = str(picture)
    if plot and report.get("storage_samples"):
        picture = path.with_name(f"{path.stem}-storage.png")
        if plot_storage(report, picture):
            report["plot"] = str(picture)
    for phase, info in report.get("phases", {}).items() if plot else ():
        # One picture per ramp (max): its own timeline, a dashed line where each step starts.
        picture = path.with_name(f"{path.stem}-{phase}.png")
        view = {
            **report,
            "series": info["series"],
            "samples": info["samples"],
            "steps": info["steps"],
            "description": f"{phase} ramp",
        }
        if plot_report(view, picture):
            report.setdefault("plots", {})[phase] = str(picture)
    path.write_text(json.dumps(report, indent=1, default=str, allow_nan=True) + "\n")
    return path


def format_report(report: dict[str, Any]) -> str:
    lines = [f"== {report['scenario']} ==", f"command   {report['command']}"]
    m = report["machine"]
    lines.append(
        f"machine   nproc {m['nproc']}, {m['memory_total_mb']} MiB, Python {m['python']}; "
        f"load before {m['loadavg_before']}, after {m.get('loadavg_after')}; git "
        f"{report['git']}"
    )
    if report.get("provisional"):
        lines.append(f"NOTE      {report['provisional']}")
    if "post" in report:
        p = report["post"]
        lat = p["latency_ms"]
        lines.append(
            f"POST      {p['accepted']}/{p['offered']} accepted, {p['achieved_per_s']}/s; "
            f"p50 {lat['p50']} p99 {lat['p99']} max {lat['max']} ms; generator "
            f"dispatch lag p99 {p['dispatch_lag_p99_ms']} ms"
        )
    if "e2e" in report:
        e = report["e2e"]
        x = e["e2e_ms"]
        lines.append(
            f"e2e       p50 {x['p50']} p90 {x['p90']} p99 {x['p99']} max {x['max']} ms; "
            f"missing {e['missing']}, duplicates {e['duplicates']}; "
            f"{e['emails_per_s_first_to_last']} e-mails/s"
        )
    if "storage" in report:
        figures = report["storage"]["per_order"]
        redis = report["storage"]["after"]["redis"]
        lines.append(
            f"redis     {redis['non_stream_keys']} keys that are not streams, longest stream "
            f"{redis['longest_stream']}, {figures['redis_bytes_left_per_order']} B per order "
            f"left behind"
        )
        lines.append(
            "postgres  B/order: "
            + ", ".join(f"{t} {b:g}" for t, b in figures["postgres_bytes_per_order"].items())
            + f"; total {figures['postgres_total_bytes_per_order']:g}, WAL "
            f"{figures['wal_bytes_per_order']:g}"
        )
    for name, slope in report.get("growth", {}).items():
        lines.append(
            f"growth    {name}: {slope['first_half_bytes_per_min']:+,.0f} B/min first half, "
            f"{slope['second_half_bytes_per_min']:+,.0f} second"
        )
    if "recovery" in report:
        lines.append(f"recovery  {json.dumps(report['recovery'], default=str)}")
    for phase, info in report.get("phases", {}).items():
        lines.append(
            f"{phase:<9} last good {info['last_good_rate_per_s']:g}/s, max achieved "
            f"{info['max_achieved_per_s']:.0f}/s"
        )
        for step in info["steps"]:
            lines.append(
                f"          {step['rate_per_s']:>6g}/s -> {step['achieved_per_s']:.0f}/s "
                f"p99 {step['post_p99_ms']:.1f} ms"
                + (
                    f", e2e p99 {step.get('e2e_p99_ms', math.nan):.0f} ms"
                    if "e2e_p99_ms" in step
                    else ""
                )
                + ("" if step["ok"] else f"  BROKE: {'; '.join(step['broke_because'])}")
            )
    if "tracing_overhead" in report:
        lines.append(f"tracing   overhead vs off: {report['tracing_overhead']}")
        for arm, med in report["medians"].items():
            lines.append(f"  {arm:<4} " + ", ".join(f"{k} {v['median']}" for k, v in med.items()))
    if "cpu" in report:
        lines += format_cpu_table(report["cpu"], m["nproc"])
    if "postgres_by_client" in report:
        lines.append(
            "postgres  CPU-ms/order by client: "
            + ", ".join(
                f"{n} {v['cpu_ms_per_order']:.3f}" for n, v in report["postgres_by_client"].items()
            )
        )
    if "user_system" in report:
        lines.append(
            "kernel    share of each process's CPU spent in system calls: "
            + ", ".join(f"{n} {v['system_share']:.0%}" for n, v in report["user_system"].items())
        )
    if "rss" in report:
        lines.append(
            "RSS       "
            + ", ".join(
                f"{n} max {i['max_mb']:.0f} MiB ({i['slope_mb_per_min']:+.2f} MiB/min)"
                for n, i in sorted(report["rss"].items())
            )
        )
    if report.get("api_gc"):
        lines.append(
            "API GC    "
            + ", ".join(
                f"gen {g}: {int(v.get('count', 0))} collections, {v.get('total_s', 0):.3f} s,"
                f" slowest <= {v.get('slowest_under_s', math.inf):g} s"
                for g, v in sorted(report["api_gc"].items())
            )
        )
    if "profile" in report and "markdown" in report["profile"]:
        lines.append(report["profile"]["markdown"])
    for target in report.get("targets", []):
        verdict = {True: "MET", False: "MISSED", None: "?"}[target["met"]]
        lines.append(f"target    {verdict:<6} {target['target']}: {target['figure']}")
    return "\n".join(lines)


def medians(headlines: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    keys = sorted({k for h in headlines for k in h})
    out = {}
    for key in keys:
        values = [float(h[key]) for h in headlines if isinstance(h.get(key), int | float)]
        values = [v for v in values if not math.isnan(v)]
        if values:
            out[key] = {
                "median": round(statistics.median(values), 4),
                "min": round(min(values), 4),
                "max": round(max(values), 4),
                "runs": len(values),
            }
    return out
