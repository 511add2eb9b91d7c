"""The text table and the targets of bench/side_by_side.py: medians with min-max spreads per
arm, the ratio of the medians, and issue 16's four targets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from bench.report import medians

__all__ = ["format_report", "summarise", "targets"]


#: (headline key, label, decimals) of the rows printed per benchmark.
_POST_ROWS: Final = (
    ("post_p50_ms", "POST p50 ms", 2),
    ("post_p99_ms", "POST p99 ms", 2),
    ("post_max_ms", "POST max ms", 1),
    ("not_2xx", "not 2xx", 0),
    ("accepted", "accepted", 0),
    ("emails_at_end_of_load", "e-mails at end of load", 0),
    ("emails_after_wait", "e-mails after wait", 0),
    ("backlog_at_end_of_load", "backlog at end of load", 0),
    ("e2e_p50_ms", "e2e p50 ms", 0),
    ("e2e_p99_ms", "e2e p99 ms", 0),
    ("cpu_ms_per_order_system", "CPU-ms/order, system*", 2),
    ("other_processes_cpu_s", "others' CPU-s (noise)", 1),
)
_DRAIN_ROWS: Final = (
    ("emails_per_s", "e-mails/s first-last", 0),
    ("emails_per_s_incl_startup", "e-mails/s incl. start", 0),
    ("first_to_last_s", "first to last, s", 2),
    ("missing", "missing", 0),
    ("duplicates", "duplicates", 0),
    ("cpu_ms_per_email_system", "CPU-ms/e-mail, system*", 2),
)


def _spread(stats: dict[str, float] | None, decimals: int) -> str:
    if stats is None:
        return "-"
    if stats["runs"] == 1 or stats["min"] == stats["max"]:
        return f"{stats['median']:.{decimals}f}"
    return (f"{stats['median']:.{decimals}f} ({stats['min']:.{decimals}f}-"
            f"{stats['max']:.{decimals}f})")  # fmt: skip


def _ratio(numerator: dict[str, float] | None, denominator: dict[str, float] | None) -> str:
    if numerator is None or denominator is None or denominator["median"] == 0:
        return "-"
    return f"{numerator['median'] / denominator['median']:.2f}x"


def _section(title: str, rows: Sequence[tuple[str, str, int]], summary: dict[str, Any],
             ratio_of: tuple[str, str], unit: str) -> list[str]:  # fmt: skip
    ours, peer = summary.get("ours", {}), summary.get("peer", {})
    top, bottom = ratio_of
    lines = [title, f"  {'':<26}{'ours: median (min-max)':<28}{'peer: median (min-max)':<28}"
                    f"{top}/{bottom}"]  # fmt: skip
    sides = {"ours": ours, "peer": peer}
    for key, label, decimals in rows:
        ratio = _ratio(sides[top].get(key), sides[bottom].get(key))
        lines.append(
            f"  {label:<26}{_spread(ours.get(key), decimals):<28}"
            f"{_spread(peer.get(key), decimals):<28}{ratio}"
        )
    prefix = f"cpu_ms_per_{unit}."
    for arm, stats in sides.items():
        split = [(k.removeprefix(prefix), v["median"]) for k, v in stats.items()
                 if k.startswith(prefix)]  # fmt: skip
        if split:
            text = ", ".join(f"{name} {value:.2f}" for name, value in split)
            lines.append(f"  {arm} CPU-ms per {unit} by process (medians): {text}")
    return lines


def _median(summary: dict[str, Any], kind: str, arm: str, key: str) -> float | None:
    stats = summary.get(kind, {}).get(arm, {}).get(key)
    return None if stats is None else float(stats["median"])


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    ours_p99 = _median(summary, "post", "ours", "post_p99_ms")
    peer_p99 = _median(summary, "post", "peer", "post_p99_ms")
    ours_rate = _median(summary, "drain", "ours", "emails_per_s")
    peer_rate = _median(summary, "drain", "peer", "emails_per_s")

    def row(what: str, figure: str, met: bool | None) -> dict[str, Any]:
        return {"target": what, "figure": figure, "met": met}

    rows = []
    if ours_p99 is not None:
        rows.append(row("ours: POST p99 < 10 ms, notifiers running (median)",
                        f"{ours_p99:.2f} ms", ours_p99 < 10))  # fmt: skip
    if ours_p99 is not None and peer_p99:
        rows.append(row("ours: POST p99 <= half the peer's (medians, same run)",
                        f"{ours_p99:.2f} vs {peer_p99:.2f} ms = {ours_p99 / peer_p99:.2f}",
                        ours_p99 <= peer_p99 / 2))  # fmt: skip
    if ours_rate is not None:
        rows.append(row("ours: drain >= 1,000 e-mails/s with two notifiers (median)",
                        f"{ours_rate:.0f}/s", ours_rate >= 1_000))  # fmt: skip
    if ours_rate is not None and peer_rate:
        rows.append(row("ours: drain >= 3x the peer's (medians, same run)",
                        f"{ours_rate:.0f} vs {peer_rate:.0f}/s = {ours_rate / peer_rate:.2f}x",
                        ours_rate >= 3 * peer_rate))  # fmt: skip
    for kind, missing in (("post", "missing_after_wait"), ("drain", "missing")):
        for arm in ("ours", "peer"):
            worst_missing = summary.get(kind, {}).get(arm, {}).get(missing)
            worst_copies = summary.get(kind, {}).get(arm, {}).get("duplicates")
            if worst_missing is not None and worst_copies is not None:
                gone, extra = worst_missing["max"], worst_copies["max"]
                rows.append(row(f"{arm}, {kind}: every e-mail once (worst round)",
                                f"missing {gone:g}, duplicates {extra:g}",
                                gone == 0 and extra == 0))  # fmt: skip
    return rows


def format_report(report: dict[str, Any]) -> str:
    cfg, m, summary = report["config"], report["machine"], report["summary"]
    lines = [
        "",
        f"== side by side: ours vs the conventional stack (FastAPI + Celery), "
        f"{cfg['rounds']} round(s) per arm, A B A B ==",
        f"command   {report['command']}",
        f"machine   nproc {m['nproc']}, RAM {m['memory_total_mb'] / 1024:.1f} GiB, Python "
        f"{m['python']}, {m['platform']}; load avg before {m['loadavg_before']}, after "
        f"{m.get('loadavg_after', '?')}; git {report['git']}",
        f"servers   {report['servers']['redis']} ({report['servers']['redis_kind']}); "
        f"{report['servers']['postgres']} (embedded); both arms",
        f"peer      {report['peer']['python']}; "
        + ", ".join(p for p in report["peer"]["packages"]
                    if p.split("==")[0].lower() in ("fastapi", "uvicorn", "celery", "asyncpg",
                                                    "pydantic", "redis", "kombu")),
    ]  # fmt: skip
    if report["quiet"].get("label"):
        lines.append(f"WARNING   {report['quiet']['label']}: figures are provisional")
    rate, workers = f"{cfg['rate_per_s']:g}", cfg["peer_concurrency"]
    if "post" in summary:
        title = (
            f"post-{rate}: {rate}/s for {cfg['duration_s']:g} s after {cfg['warmup_s']:g} s "
            f"warm-up, {cfg['connections']} connections; ours {cfg['notifiers']} notifiers, "
            f"peer 1 uvicorn + celery prefork x{workers}"
        )
        lines += _section(title, _POST_ROWS, summary["post"], ("peer", "ours"), "order")
    if "drain" in summary:
        title = (
            f"drain: {cfg['drain_emails']} e-mails queued, then ours {cfg['notifiers']} "
            f"notifiers / peer celery prefork x{workers}"
        )
        lines += _section(title, _DRAIN_ROWS, summary["drain"], ("ours", "peer"), "email")
    for failure in report["failures"]:
        lines.append(f"FAILED    {failure['arm']} round {failure['round']}: {failure['error']}")
    for target in report["targets"]:
        verdict = {True: "MET", False: "MISSED", None: "?"}[target["met"]]
        lines.append(f"target    {verdict:<6} {target['target']}: {target['figure']}")
    lines.append("* system: every process but the load generator, the SMTP sink and this harness")
    lines.append(f"logs      {report['run_dir']}/*/logs")
    return "\n".join(lines)


def summarise(rounds: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    return {
        kind: {arm: medians([r["headline"] for r in runs if "headline" in r])
               for arm, runs in arms.items()}
        for kind, arms in rounds.items()
    }  # fmt: skip
