"""Intake benchmark: how many orders per second the system takes, at what latency and CPU cost.

One command starts the system on a fresh temporary data folder (embedded PostgreSQL and Redis,
the SMTP sink, `acme api` and `acme relay` as child processes, as `acme up` does), waits until
`/health/ready` answers 200, warms up, then offers `--rate` orders/s for `--duration-s` with
the open-loop generator in bench/loadgen.py. It reports the load figures, the CPU each process
spent during the measured window (per accepted order), and checks that every accepted order's
event reached the Redis stream. Everything is stopped again, also on Ctrl-C or an error.

The generator runs in this process and shares the machine's cores with the system under test;
the CPU table shows how the cores were split, including what other processes on the machine
took (see /work/shared/MEASURING.md).

Usage: ``.tox/py311/bin/python bench/intake.py --rate 200 --duration-s 30``
Result: ``bench/results/intake-<rate>-<timestamp>.json`` (git-ignored).
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as a script (`python bench/intake.py`): make `bench.loadgen` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import math
import os
import platform
import shlex
import shutil
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg
from redis.asyncio import Redis

from acme_runtime.channels import Shard
from bench.cpu import CpuSnapshot, cpu_table, format_cpu_table
from bench.loadgen import (
    DEFAULT_CONNECTIONS,
    MAX_DURATION_S,
    MAX_RATE_PER_S,
    LoadResult,
    install_uvloop,
    run_load,
)
from bench.monitor import loadavg, nproc
from bench.stack import (
    HOST,
    RESULTS_DIR,
    Stack,
    git_revision,
    iso_ms,
    log_levels,
    log_tail,
    raise_interrupt,
    scan_stream,
    signals_ignored,
)

MAX_WARMUP_S: Final = 60.0
READY_TIMEOUT_S: Final = 60.0
# Per-request rows go into the JSON only up to this many requests, to keep files readable.
_MAX_RECORD_ROWS: Final = 200_000
_SLOWEST_SHOWN: Final = 5


# --- checks after the run -----------------------------------------------------------------


@dataclass
class _StreamCheck:
    accepted: int
    found: int
    missing: int
    duplicates: int
    entries: int
    waited_s: float
    publish_lag_ms: dict[str, float]
    published_after_1s: int


async def _check_stream(
    redis: Redis, result: LoadResult, timeout_s: float, on: Sequence[Shard]
) -> _StreamCheck:
    """Wait until every accepted order's event is on the stream of one of the shards `on`
    (or the timeout passes)."""
    wanted = {r.order_id: r.created_at for r in result.ok_records if r.order_id}
    scan = await scan_stream(redis, set(wanted), timeout_s, on)
    first_seen_ms, counts = scan.first_seen_ms, scan.counts
    found = [o for o in wanted if o in first_seen_ms]
    lags = sorted(
        first_seen_ms[o] - iso_ms(created) for o in found if (created := wanted[o]) is not None
    )

    def pick(fraction: float) -> float:
        return lags[max(0, math.ceil(fraction * len(lags)) - 1)] if lags else math.nan

    return _StreamCheck(
        accepted=len(wanted),
        found=len(found),
        missing=len(wanted) - len(found),
        duplicates=sum(counts.get(o, 0) - 1 for o in found),
        entries=scan.entries,
        waited_s=scan.waited_s,
        publish_lag_ms={
            "p50": pick(0.5),
            "p99": pick(0.99),
            "max": lags[-1] if lags else math.nan,
        },
        published_after_1s=sum(1 for lag in lags if lag > 1000),
    )


async def _database_counts(database_url: str) -> dict[str, Any]:
    """Orders and outbox state straight from PostgreSQL (best effort: the schema may move)."""
    try:
        conn = await asyncpg.connect(database_url, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        return {"error": repr(exc)}
    try:
        return {
            "orders": await conn.fetchval("SELECT count(*) FROM orders"),
            "outbox_rows": await conn.fetchval("SELECT count(*) FROM outbox"),
            "outbox_unpublished": await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE published_at IS NULL"
            ),
            "outbox_published_more_than_once": await conn.fetchval(
                "SELECT count(*) FROM outbox WHERE publish_count > 1"
            ),
        }
    except asyncpg.PostgresError as exc:
        return {"error": repr(exc)}
    finally:
        await conn.close()


def _per_second(result: LoadResult) -> list[dict[str, Any]]:
    """Requests grouped by the second they were due: count, non-2xx, p50/p99/max latency."""
    buckets: dict[int, list[float]] = {}
    bad: dict[int, int] = {}
    for record in result.records:
        second = int(record.scheduled_s)
        buckets.setdefault(second, []).append(record.latency_s * 1000)
        if not 200 <= record.status < 300:
            bad[second] = bad.get(second, 0) + 1
    rows = []
    for second in sorted(buckets):
        values = sorted(buckets[second])
        rows.append(
            {
                "second": second,
                "requests": len(values),
                "not_2xx": bad.get(second, 0),
                "p50_ms": round(values[len(values) // 2], 2),
                "p99_ms": round(values[max(0, math.ceil(0.99 * len(values)) - 1)], 2),
                "max_ms": round(values[-1], 2),
            }
        )
    return rows


# --- the run ------------------------------------------------------------------------------


@dataclass
class _Measurement:
    warmup: LoadResult | None
    load: LoadResult
    before: CpuSnapshot
    after: CpuSnapshot
    stream: _StreamCheck
    database: dict[str, Any]


async def _measure(stack: Stack, args: argparse.Namespace) -> _Measurement:
    ready_s = await stack.wait_api_ready(READY_TIMEOUT_S)
    print(f"system ready in {ready_s:.1f} s; warming up {args.warmup_s:g} s ...", flush=True)
    warmup = None
    if args.warmup_s > 0:
        warmup = await run_load(
            HOST, stack.http_port, args.rate, args.warmup_s, args.connections,
            drain_timeout_s=args.drain_timeout_s, key_prefix=f"warmup-{os.getpid()}", seed=1,
            api_key=stack.api_key,
        )  # fmt: skip
    roots = stack.roots()
    print(f"measuring {args.rate:g}/s for {args.duration_s:g} s ...", flush=True)
    before = stack.snapshot(roots)
    load = await run_load(
        HOST, stack.http_port, args.rate, args.duration_s, args.connections,
        drain_timeout_s=args.drain_timeout_s, key_prefix=f"measure-{os.getpid()}", seed=2,
        api_key=stack.api_key,
    )  # fmt: skip
    after = stack.snapshot(roots)
    redis = Redis.from_url(stack.redis_url, socket_timeout=5)
    try:
        stream = await _check_stream(redis, load, args.stream_timeout_s, stack.stream_shards())
    finally:
        await redis.aclose()
    database = await _database_counts(stack.database_url)
    return _Measurement(warmup, load, before, after, stream, database)


def _record_rows(result: LoadResult) -> dict[str, Any] | None:
    if len(result.records) > _MAX_RECORD_ROWS:
        return None
    return {
        "columns": ["index", "scheduled_s", "latency_ms", "dispatch_lag_ms", "queue_wait_ms",
                    "status", "order_id", "created_at", "error", "retried"],
        "rows": [
            [r.index, round(r.scheduled_s, 6), round(r.latency_s * 1000, 3),
             round(r.dispatch_lag_s * 1000, 3), round(r.queue_wait_s * 1000, 3), r.status,
             r.order_id, r.created_at, r.error, r.retried]
            for r in result.records
        ],
    }  # fmt: skip


def _format(report: dict[str, Any], m: _Measurement, result_path: Path) -> str:
    cpu = report["cpu"]
    lines = [
        "",
        f"== intake {report['config']['rate_per_s']:g}/s for "
        f"{report['config']['duration_s']:g} s ==",
        f"command   {report['command']}",
        f"machine   nproc {report['machine']['nproc']}, load avg before "
        f"{report['machine']['loadavg_before']}, after {report['machine']['loadavg_after']}; "
        f"git {report['git']}; loop {report['event_loop']}",
        m.load.format_summary(),
        *format_cpu_table(cpu, report["machine"]["nproc"]),
    ]
    s = m.stream
    verdict = "OK" if s.missing == 0 else f"MISSING {s.missing}"
    lines.append(
        f"stream    {verdict}: {s.found}/{s.accepted} accepted orders on the events stream "
        f"(checked for {s.waited_s:.1f} s); duplicates {s.duplicates}; publish lag p50 "
        f"{s.publish_lag_ms['p50']:.0f} ms, p99 {s.publish_lag_ms['p99']:.0f} ms, max "
        f"{s.publish_lag_ms['max']:.0f} ms; {s.published_after_1s} published > 1 s after commit"
    )
    lines.append(f"database  {m.database}")
    slowest = sorted(m.load.records, key=lambda r: r.latency_s, reverse=True)[:_SLOWEST_SHOWN]
    lines.append(
        "slowest   "
        + "; ".join(
            f"#{r.index} at {r.scheduled_s:.2f}s: {r.latency_s * 1000:.0f} ms "
            f"(waited {r.queue_wait_s * 1000:.0f} ms for a connection, status {r.status})"
            for r in slowest
        )
    )
    for name, info in report["logs"].items():
        levels = info["levels"]
        noisy = {k: v for k, v in levels.items() if k not in ("info", "debug")}
        if noisy:
            lines.append(f"log       {name}: {noisy}; e.g. {info['samples'][:2]}")
    if m.warmup is not None:
        counts = m.warmup.status_counts()
        lines.append(
            f"warm-up   {len(m.warmup.records)} requests, 2xx {counts['2xx']}, "
            f"p99 {m.warmup.latency_ms()['p99']:.1f} ms"
        )
    lines.append(f"result    {result_path}")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Start the system on a temporary folder and measure order intake."
    )
    parser.add_argument("--rate", type=float, default=200.0, help="orders per second")
    parser.add_argument("--duration-s", type=float, default=30.0, help="measured window")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="not counted; 0 to skip")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument("--drain-timeout-s", type=float, default=30.0)
    parser.add_argument("--stream-timeout-s", type=float, default=10.0)
    parser.add_argument("--keep-data", action="store_true", help="keep the temp folder")
    parser.add_argument("--no-uvloop", action="store_true", help="generator on stock asyncio")
    return parser


def _report(args: argparse.Namespace, m: _Measurement, stack: Stack, extra: dict[str, Any]
            ) -> dict[str, Any]:  # fmt: skip
    logs = {}
    for child in stack.children:
        levels, samples = log_levels(child.log_path)
        logs[child.name] = {"levels": levels, "samples": samples}
    acme_env = {k: v for k, v in os.environ.items() if k.startswith("ACME_") and "URL" not in k}
    return {
        **extra,
        "config": {
            "rate_per_s": args.rate,
            "duration_s": args.duration_s,
            "warmup_s": args.warmup_s,
            "connections": args.connections,
            "drain_timeout_s": args.drain_timeout_s,
            "acme_env": acme_env,
        },
        "load": m.load.summary(),
        "warmup": m.warmup.summary() if m.warmup else None,
        "per_second": _per_second(m.load),
        "cpu": cpu_table(m.before, m.after, len(m.load.ok_records)),
        "stream": m.stream.__dict__,
        "database": m.database,
        "logs": logs,
        "records": _record_rows(m.load),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 0 < args.rate <= MAX_RATE_PER_S or not 0 < args.duration_s <= MAX_DURATION_S:
        print(f"intake: rate must be in (0, {MAX_RATE_PER_S:g}], duration in (0, "
              f"{MAX_DURATION_S:g}]", file=sys.stderr)  # fmt: skip
        return 2
    if not 0 <= args.warmup_s <= MAX_WARMUP_S:
        print(f"intake: warm-up must be in [0, {MAX_WARMUP_S:g}] s", file=sys.stderr)
        return 2
    command = shlex.join(sys.orig_argv)
    loop_name = "asyncio" if args.no_uvloop or not install_uvloop() else "uvloop"
    root = Path(tempfile.mkdtemp(prefix="acme-intake-"))
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
        stack.start_acme_sink()
        stack.start_api()
        stack.start_relay()
        measurement = asyncio.run(_measure(stack, args))
        extra["machine"]["loadavg_after"] = loadavg()
        report = _report(args, measurement, stack, extra)
    except KeyboardInterrupt:
        print("\nintake: interrupted; stopping the system ...", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - report, then stop the stack below
        print(f"intake: failed: {exc}", file=sys.stderr)
        for child in stack.children:
            print(f"--- {child.log_path}\n{log_tail(child.log_path, 10)}", file=sys.stderr)
        return 1
    finally:
        with signals_ignored():
            stack.stop()
            if not args.keep_data:
                shutil.rmtree(root, ignore_errors=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    result_path = RESULTS_DIR / f"intake-{args.rate:g}-{stamp}.json"
    result_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(_format(report, measurement, result_path))
    ok = measurement.stream.missing == 0 and measurement.load.status_counts()["2xx"] == len(
        measurement.load.records
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
