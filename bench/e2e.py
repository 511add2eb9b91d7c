"""End-to-end benchmark: from `POST /orders` to the confirmation e-mail accepted over SMTP.

One command starts the whole system on a fresh temporary folder (bench/stack.py: embedded
PostgreSQL and Redis, `acme api`, `acme relay`, `--notifiers` `acme notifier` replicas) with an
SMTP sink that is *its own process* (bench/sink_recorder.py): it appends
`order_id,received_at,message_id` for every message it accepts, so receiving mail costs neither
the generator's CPU nor its event loop. After a warm-up (whose e-mails are awaited too), the
open-loop generator of bench/loadgen.py offers `--rate` orders/s for `--duration-s`; then the
benchmark waits (at most `--mail-drain-s`) until every accepted order's e-mail has arrived.

Per accepted order, end-to-end latency = the sink's `received_at` (time.time() when it accepted
DATA) - the order's `created_at` from the POST response (the API's clock, taken before its
transaction; same machine, same clock). Also reported: latency from the generator's scheduled
send time (includes the POST's own queueing), the two stages either side of the events stream
(created -> stream entry id time, stream -> SMTP), missing e-mails (none after the drain wait),
duplicates (an order id received twice), the CPU each process spent from the first POST until the
last e-mail, per accepted order, and what the child logs say at warning level and above.

Notifier settings come from the environment (ACME_NOTIFY_CONCURRENCY, ACME_SMTP_POOL_SIZE, ...),
which every child inherits; the report records the ACME_* variables that were set.

The named scenarios of the benchmark suite (steady-50, peak-200, max, outage-recovery, soak),
with per-second time series and plots, are in bench/run.py, which reuses this module's checks.

Usage: ``.tox/py311/bin/python bench/e2e.py --rate 200 --duration-s 30 [--notifiers 2]``
Result: ``bench/results/e2e-<rate>x<duration>s-<timestamp>.json`` (git-ignored).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as a script (`python bench/e2e.py`): make `bench.*` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import math
import os
import platform
import shlex
import signal
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from acme_runtime.channels import NOTIFIER_GROUP, RECEIPTS_GROUP, Shard, shard
from bench.cpu import CpuSnapshot, cpu_table, format_cpu_table
from bench.loadgen import (
    DEFAULT_CONNECTIONS,
    MAX_DURATION_S,
    MAX_RATE_PER_S,
    LoadResult,
    RequestRecord,
    install_uvloop,
    run_load,
)
from bench.monitor import loadavg, nproc
from bench.stack import (
    HOST,
    RESULTS_DIR,
    MailLog,
    Stack,
    StreamScan,
    git_revision,
    iso_ms,
    log_events,
    log_levels,
    log_tail,
    nearest_rank,
    raise_interrupt,
    scan_stream,
    signals_ignored,
)

__all__ = ["child_logs", "database_state", "redis_state", "stats_ms", "wait_ready"]

MAX_NOTIFIERS: Final = 16
MAX_WARMUP_S: Final = 60.0
MAX_MAIL_DRAIN_S: Final = 600.0
READY_TIMEOUT_S: Final = 60.0
_MAX_RECORD_ROWS: Final = 200_000
_SLOWEST_SHOWN: Final = 5
_PERCENTILES: Final = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
# Log events worth a line in the summary even at info level.
_NOTABLE_EVENTS: Final = ("duplicate_suppressed", "send_failed_transient", "smtp_circuit_opened")


# --- measuring ----------------------------------------------------------------------------


@dataclass
class _Measurement:
    warmup: LoadResult | None
    warmup_missing: int
    load: LoadResult
    before: CpuSnapshot
    posted: CpuSnapshot
    after: CpuSnapshot
    mail_drain_s: float
    mail: MailLog
    stream: StreamScan
    database: dict[str, Any]
    redis: dict[str, Any]


async def wait_ready(stack: Stack, received_path: Path) -> float:
    start = time.monotonic()
    await stack.wait_file(received_path, READY_TIMEOUT_S)
    await stack.wait_api_ready(READY_TIMEOUT_S)
    for child in stack.children:
        if child.name.startswith("notifier-"):
            remaining_s = max(1.0, READY_TIMEOUT_S - (time.monotonic() - start))
            await stack.wait_log(child, "notifier_started", remaining_s)
    return time.monotonic() - start


def _accepted_ids(result: LoadResult) -> set[str]:
    return {r.order_id for r in result.ok_records if r.order_id}


async def _measure(stack: Stack, args: argparse.Namespace, received_path: Path) -> _Measurement:
    ready_s = await wait_ready(stack, received_path)
    mail = MailLog(received_path)
    print(f"system ready in {ready_s:.1f} s; warming up {args.warmup_s:g} s ...", flush=True)
    warmup = None
    warmup_missing = 0
    if args.warmup_s > 0:
        warmup = await run_load(
            HOST, stack.http_port, args.rate, args.warmup_s, args.connections,
            drain_timeout_s=args.drain_timeout_s, key_prefix=f"warmup-{os.getpid()}", seed=1,
            api_key=stack.api_key,
        )  # fmt: skip
        # Start the measured window with no warm-up e-mail still in flight.
        wanted = _accepted_ids(warmup)
        waited_s = await mail.wait_for(wanted, args.mail_drain_s, stack)
        warmup_missing = len(wanted - mail.first_at.keys())
        print(f"warm-up e-mails drained in {waited_s:.1f} s (missing {warmup_missing})")
    roots = stack.roots()
    print(f"measuring {args.rate:g}/s for {args.duration_s:g} s ...", flush=True)
    before = stack.snapshot(roots)
    load = await run_load(
        HOST, stack.http_port, args.rate, args.duration_s, args.connections,
        drain_timeout_s=args.drain_timeout_s, key_prefix=f"measure-{os.getpid()}", seed=2,
        api_key=stack.api_key,
    )  # fmt: skip
    posted = stack.snapshot(roots)
    wanted = _accepted_ids(load)
    print(f"waiting up to {args.mail_drain_s:g} s for {len(wanted)} e-mails ...", flush=True)
    mail_drain_s = await mail.wait_for(wanted, args.mail_drain_s, stack)
    after = stack.snapshot(roots)
    if args.settle_s > 0:
        # Late duplicates (a redelivery, a re-drive) would arrive after the last first copy.
        await asyncio.sleep(args.settle_s)
        mail.poll()
    redis = Redis.from_url(stack.redis_url, socket_timeout=5)
    try:
        on = stack.stream_shards()
        stream = await scan_stream(redis, wanted, timeout_s=5.0, on=on)
        redis_now = await redis_state(redis, on)
    finally:
        await redis.aclose()
    database = await database_state(stack.database_url)
    return _Measurement(warmup, warmup_missing, load, before, posted, after, mail_drain_s,
                        mail, stream, database, redis_now)  # fmt: skip


async def database_state(database_url: str) -> dict[str, Any]:
    """Orders by notification status, the outbox and the send ledger (whole run, best effort)."""
    try:
        conn = await asyncpg.connect(database_url, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        return {"error": repr(exc)}
    try:
        statuses = await conn.fetch(
            "SELECT notification_status, count(*) AS n FROM orders GROUP BY 1 ORDER BY 1"
        )
        by_consumer = await conn.fetch(
            "SELECT consumer, count(*) AS n FROM notify.sent_ledger GROUP BY 1 ORDER BY 1"
        )
        return {
            "orders_by_notification_status": {r["notification_status"]: r["n"] for r in statuses},
            "outbox_rows_left": await conn.fetchval("SELECT count(*) FROM outbox"),
            "outbox_published_more_than_once": await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE publish_count > 1"
            ),
            "ledger_rows": await conn.fetchval("SELECT count(*) FROM notify.sent_ledger"),
            "ledger_by_consumer": {r["consumer"]: r["n"] for r in by_consumer},
            "ledger_sent_after_retry": await conn.fetchval(
                "SELECT count(*) FROM notify.sent_ledger WHERE deliveries > 1"
            ),
        }
    except asyncpg.PostgresError as exc:
        return {"error": repr(exc)}
    finally:
        await conn.close()


async def redis_state(redis: Redis, on: Sequence[Shard] = (shard(0),)) -> dict[str, Any]:
    """Pending entries of both consumer groups and the dead-letter streams (whole run),
    summed over the shards `on` (`Stack.stream_shards()`)."""
    names = ("events_pending", "events_length", "dead_length", "receipts_length")
    state: dict[str, Any] = dict.fromkeys((*names, "receipts_pending"), 0)
    try:
        for s in on:
            events: Any = await redis.xpending(s.events, NOTIFIER_GROUP)
            state["events_pending"] += int(events["pending"])
            state["events_length"] += int(await redis.xlen(s.events))
            state["dead_length"] += int(await redis.xlen(s.dead))
            state["receipts_length"] += int(await redis.xlen(s.receipts))
            receipts: Any = await redis.xpending(s.receipts, RECEIPTS_GROUP)
            state["receipts_pending"] += int(receipts["pending"])
    except (RedisError, OSError) as exc:
        state["error"] = repr(exc)
    return state


# --- figures ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _OrderTimes:
    record: RequestRecord
    received_at: float | None
    copies: int
    #: received - created_at, ms
    e2e_ms: float | None
    #: received - the generator's scheduled send time, ms
    from_scheduled_ms: float | None
    #: stream entry time - created_at, ms (Redis clock, 1 ms steps)
    published_ms: float | None
    #: received - stream entry time, ms
    stream_to_mail_ms: float | None


def _order_times(m: _Measurement) -> list[_OrderTimes]:
    rows = []
    for record in m.load.ok_records:
        if not record.order_id or not record.created_at:
            continue
        created_ms = iso_ms(record.created_at)
        received = m.mail.first_at.get(record.order_id)
        stream_ms = m.stream.first_seen_ms.get(record.order_id)
        scheduled_ms = (m.load.started_unix_s + record.scheduled_s) * 1000
        received_ms = None if received is None else received * 1000
        rows.append(
            _OrderTimes(
                record=record,
                received_at=received,
                copies=m.mail.copies.get(record.order_id, 0),
                e2e_ms=None if received_ms is None else received_ms - created_ms,
                from_scheduled_ms=None if received_ms is None else received_ms - scheduled_ms,
                published_ms=None if stream_ms is None else stream_ms - created_ms,
                stream_to_mail_ms=(
                    None if received_ms is None or stream_ms is None else received_ms - stream_ms
                ),
            )
        )
    return rows


def stats_ms(values: list[float | None]) -> dict[str, float]:
    present = sorted(v for v in values if v is not None)
    out = {label: round(nearest_rank(present, f), 2) for label, f in _PERCENTILES}
    out["max"] = round(present[-1], 2) if present else math.nan
    out["count"] = len(present)
    return out


def _e2e_figures(m: _Measurement, times: list[_OrderTimes]) -> dict[str, Any]:
    accepted = len(m.load.ok_records)
    received = [t for t in times if t.received_at is not None]
    arrivals = sorted(t.received_at for t in received if t.received_at is not None)
    span_s = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else 0.0
    measured = {t.record.order_id for t in times}
    other_lines = sum(n for o, n in m.mail.copies.items() if o not in measured)
    last_post_unix_s = m.load.started_unix_s + m.load.elapsed_s
    return {
        "orders_offered": len(m.load.records),
        "orders_accepted": accepted,
        "emails_received": sum(t.copies for t in times),
        "orders_with_email": len(received),
        "missing": accepted - len(received),
        "duplicates": sum(t.copies - 1 for t in received),
        "duplicates_whole_run": sum(n - 1 for n in m.mail.copies.values() if n > 1),
        "sink_lines_total": m.mail.lines,
        "sink_lines_without_order_id": m.mail.without_order_id,
        "sink_lines_other_orders": other_lines,
        "warmup_missing": m.warmup_missing,
        "mail_drain_waited_s": round(m.mail_drain_s, 3),
        "last_email_after_last_post_s": (
            round(arrivals[-1] - last_post_unix_s, 3) if arrivals else math.nan
        ),
        "emails_per_s_first_to_last": round((len(arrivals) - 1) / span_s, 2) if span_s else 0.0,
        "e2e_ms": stats_ms([t.e2e_ms for t in times]),
        "e2e_from_scheduled_ms": stats_ms([t.from_scheduled_ms for t in times]),
        "created_to_stream_ms": stats_ms([t.published_ms for t in times]),
        "stream_to_smtp_ms": stats_ms([t.stream_to_mail_ms for t in times]),
        "e2e_over_1s": sum(1 for t in times if t.e2e_ms is not None and t.e2e_ms > 1000),
        "post_latency_ms": {
            k: round(v, 2) for k, v in m.load.latency_ms().items() if k in ("p50", "p99", "max")
        },
    }


def _per_second(times: list[_OrderTimes]) -> list[dict[str, Any]]:
    """Orders grouped by the second they were due: count, missing, e2e p50/p99/max."""
    buckets: dict[int, list[_OrderTimes]] = {}
    for t in times:
        buckets.setdefault(int(t.record.scheduled_s), []).append(t)
    rows = []
    for second in sorted(buckets):
        group = buckets[second]
        e2e = sorted(t.e2e_ms for t in group if t.e2e_ms is not None)
        rows.append(
            {
                "second": second,
                "orders": len(group),
                "missing": sum(1 for t in group if t.received_at is None),
                "e2e_p50_ms": round(nearest_rank(e2e, 0.5), 2),
                "e2e_p99_ms": round(nearest_rank(e2e, 0.99), 2),
                "e2e_max_ms": round(e2e[-1], 2) if e2e else math.nan,
            }
        )
    return rows


def _record_rows(times: list[_OrderTimes]) -> dict[str, Any] | None:
    if len(times) > _MAX_RECORD_ROWS:
        return None

    def r3(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        "columns": ["index", "scheduled_s", "post_latency_ms", "order_id", "created_at",
                    "received_at", "copies", "e2e_ms", "created_to_stream_ms",
                    "stream_to_smtp_ms"],
        "rows": [
            [t.record.index, round(t.record.scheduled_s, 6), round(t.record.latency_s * 1000, 3),
             t.record.order_id, t.record.created_at, t.received_at, t.copies, r3(t.e2e_ms),
             r3(t.published_ms), r3(t.stream_to_mail_ms)]
            for t in times
        ],
    }  # fmt: skip


# --- report -------------------------------------------------------------------------------


def child_logs(stack: Stack) -> dict[str, Any]:
    logs: dict[str, Any] = {}
    for child in stack.children:
        levels, samples = log_levels(child.log_path)
        events = log_events(child.log_path)
        logs[child.name] = {"levels": levels, "samples": samples, "events": events}
    return logs


def _report(args: argparse.Namespace, m: _Measurement, stack: Stack, times: list[_OrderTimes],
            extra: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    acme_env = {k: v for k, v in os.environ.items() if k.startswith("ACME_") and "URL" not in k}
    accepted = len(m.load.ok_records)
    return {
        **extra,
        "config": {
            "rate_per_s": args.rate,
            "duration_s": args.duration_s,
            "notifiers": args.notifiers,
            "warmup_s": args.warmup_s,
            "connections": args.connections,
            "drain_timeout_s": args.drain_timeout_s,
            "mail_drain_s": args.mail_drain_s,
            "settle_s": args.settle_s,
            "acme_env": acme_env,
        },
        "e2e": _e2e_figures(m, times),
        "load": m.load.summary(),
        "warmup": m.warmup.summary() if m.warmup else None,
        # From the first POST until the last e-mail arrived (or the drain wait ended).
        "cpu": cpu_table(m.before, m.after, accepted),
        # The POSTs alone, comparable with bench/intake.py's window.
        "cpu_during_posts": cpu_table(m.before, m.posted, accepted),
        "per_second": _per_second(times),
        "stream": {
            "entries": m.stream.entries,
            "measured_orders_on_stream": sum(1 for t in times if t.published_ms is not None),
            "measured_orders_published_twice": sum(
                1 for t in times if m.stream.counts.get(t.record.order_id or "", 0) > 1
            ),
        },
        "database": m.database,
        "redis": m.redis,
        "logs": child_logs(stack),
        "records": _record_rows(times),
    }


def _fmt_stats(stats: dict[str, float]) -> str:
    return "  ".join(f"{k} {stats[k]:.0f}" for k in ("p50", "p90", "p99", "max")) + " ms"


def _format(report: dict[str, Any], m: _Measurement, times: list[_OrderTimes],
            result_path: Path) -> str:  # fmt: skip
    cfg, e = report["config"], report["e2e"]
    verdict = "OK" if e["missing"] == 0 and e["duplicates"] == 0 else "NOT OK"
    lines = [
        "",
        f"== e2e: {cfg['rate_per_s']:g}/s for {cfg['duration_s']:g} s, "
        f"{cfg['notifiers']} notifier(s) ==",
        f"command   {report['command']}",
        f"machine   nproc {report['machine']['nproc']}, load avg before "
        f"{report['machine']['loadavg_before']}, after {report['machine']['loadavg_after']}; "
        f"git {report['git']}; loop {report['event_loop']}",
        m.load.format_summary(),
        f"e-mail    {verdict}: orders offered {e['orders_offered']}, accepted "
        f"{e['orders_accepted']}, e-mails received {e['emails_received']} for "
        f"{e['orders_with_email']} orders; missing {e['missing']}, duplicates "
        f"{e['duplicates']} (whole run {e['duplicates_whole_run']})",
        f"          drain waited {e['mail_drain_waited_s']:.1f} s; last e-mail "
        f"{e['last_email_after_last_post_s']:.2f} s after the last POST answer; "
        f"{e['emails_per_s_first_to_last']:.1f} e-mails/s first to last",
        f"e2e       {_fmt_stats(e['e2e_ms'])} (created_at -> SMTP DATA accepted); "
        f"{e['e2e_over_1s']} orders over 1 s",
        f"          {_fmt_stats(e['e2e_from_scheduled_ms'])} (from the scheduled send time)",
        f"stages    created -> stream {_fmt_stats(e['created_to_stream_ms'])}",
        f"          stream -> SMTP    {_fmt_stats(e['stream_to_smtp_ms'])}",
        f"POST      p50 {e['post_latency_ms']['p50']:.1f} ms, p99 "
        f"{e['post_latency_ms']['p99']:.1f} ms, max {e['post_latency_ms']['max']:.1f} ms",
        *format_cpu_table(report["cpu"], report["machine"]["nproc"]),
    ]
    worst = max(report["per_second"], key=lambda r: r["e2e_p99_ms"], default=None)
    if worst is not None:
        lines.append(
            f"worst s   second {worst['second']}: e2e p99 {worst['e2e_p99_ms']:.0f} ms, "
            f"max {worst['e2e_max_ms']:.0f} ms, missing {worst['missing']}"
        )
    slowest = sorted(
        (t for t in times if t.e2e_ms is not None), key=lambda t: t.e2e_ms or 0.0, reverse=True
    )[:_SLOWEST_SHOWN]
    lines.append(
        "slowest   "
        + "; ".join(
            f"#{t.record.index} at {t.record.scheduled_s:.2f}s: {t.e2e_ms or 0:.0f} ms "
            f"(stream after {t.published_ms if t.published_ms is not None else math.nan:.0f})"
            for t in slowest
        )
    )
    lines.append(f"database  {report['database']}")
    lines.append(f"redis     {report['redis']}")
    for child_name, info in report["logs"].items():
        noisy = {k: v for k, v in info["levels"].items() if k not in ("info", "debug")}
        notable = {k: info["events"][k] for k in _NOTABLE_EVENTS if k in info["events"]}
        sent = info["events"].get("email_sent")
        if noisy or notable or sent is not None:
            lines.append(
                f"log       {child_name}: "
                + (f"email_sent {sent} (whole run); " if sent is not None else "")
                + (f"{notable}; " if notable else "")
                + (f"{noisy}; e.g. {info['samples'][:2]}" if noisy else "no warnings/errors")
            )
    if m.warmup is not None:
        counts = m.warmup.status_counts()
        lines.append(
            f"warm-up   {len(m.warmup.records)} requests, 2xx {counts['2xx']}, e-mails missing "
            f"{m.warmup_missing}"
        )
    lines.append(f"logs      {report['data_dir']}/logs (and received.csv)")
    lines.append(f"result    {result_path}")
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Start the whole system on a temporary folder and measure order-to-e-mail "
        "latency, losses, duplicates and CPU per order."
    )
    parser.add_argument("--rate", type=float, default=200.0, help="orders per second")
    parser.add_argument("--duration-s", type=float, default=30.0, help="measured window")
    parser.add_argument("--notifiers", type=int, default=2, help="notifier replicas")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="not counted; 0 to skip")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument("--drain-timeout-s", type=float, default=30.0, help="for POST answers")
    parser.add_argument("--mail-drain-s", type=float, default=30.0,
                        help="how long to wait for e-mails after the last POST")  # fmt: skip
    parser.add_argument("--settle-s", type=float, default=2.0,
                        help="extra wait for late duplicates (outside the CPU window)")  # fmt: skip
    parser.add_argument(
        "--keep-data", action="store_true", help="keep the databases too (logs always stay)"
    )
    parser.add_argument("--no-uvloop", action="store_true", help="generator on stock asyncio")
    return parser


def _resolve(args: argparse.Namespace) -> str | None:
    """An error message for out-of-range arguments, or None when fine."""
    checks = [
        (0 < args.rate <= MAX_RATE_PER_S, f"rate must be in (0, {MAX_RATE_PER_S:g}]"),
        (0 < args.duration_s <= MAX_DURATION_S, f"duration in (0, {MAX_DURATION_S:g}]"),
        (0 <= args.notifiers <= MAX_NOTIFIERS, f"notifiers in [0, {MAX_NOTIFIERS}]"),
        (0 <= args.warmup_s <= MAX_WARMUP_S, f"warm-up in [0, {MAX_WARMUP_S:g}] s"),
        (0 < args.mail_drain_s <= MAX_MAIL_DRAIN_S, f"mail drain in (0, {MAX_MAIL_DRAIN_S:g}]"),
        (0 <= args.settle_s <= MAX_WARMUP_S, f"settle in [0, {MAX_WARMUP_S:g}] s"),
    ]
    failed = [message for ok, message in checks if not ok]
    return "; ".join(failed) if failed else None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    problem = _resolve(args)
    if problem is not None:
        print(f"e2e: {problem}", file=sys.stderr)
        return 2
    command = shlex.join(sys.orig_argv)
    loop_name = "asyncio" if args.no_uvloop or not install_uvloop() else "uvloop"
    root = Path(tempfile.mkdtemp(prefix="acme-e2e-"))
    received_path = root / "received.csv"
    signal.signal(signal.SIGTERM, raise_interrupt)
    stack = Stack(root)
    extra: dict[str, Any] = {
        "command": command,
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "nproc": nproc(),
            "python": platform.python_version(),
            "loadavg_before": loadavg(),
        },
        "git": git_revision(),
        "event_loop": loop_name,
        "data_dir": str(root),
    }
    print(f"starting the system in {root} (nproc {nproc()}) ...", flush=True)
    try:
        stack.start_servers()
        stack.start_recorder_sink(received_path)
        stack.start_api()
        stack.start_relay()
        stack.start_notifiers(args.notifiers)
        measurement = asyncio.run(_measure(stack, args, received_path))
        extra["machine"]["loadavg_after"] = loadavg()
    except KeyboardInterrupt:
        print("\ne2e: interrupted; stopping the system ...", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - report, then stop the stack below
        print(f"e2e: failed: {exc}", file=sys.stderr)
        for child in stack.children:
            print(f"--- {child.log_path}\n{log_tail(child.log_path, 10)}", file=sys.stderr)
        return 1
    finally:
        with signals_ignored():
            stack.stop()
            if not args.keep_data:
                stack.remove_data()
    # After stop: shutdown warnings and errors are in the logs too.
    times = _order_times(measurement)
    report = _report(args, measurement, stack, times, extra)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    label = f"{args.rate:g}x{args.duration_s:g}s"
    result_path = RESULTS_DIR / f"e2e-{label}-{stamp}.json"
    result_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(_format(report, measurement, times, result_path))
    e = report["e2e"]
    ok = (
        e["missing"] == 0
        and e["duplicates"] == 0
        and measurement.load.status_counts()["2xx"] == len(measurement.load.records)
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
