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

Usage: ``.venv/bin/python bench/intake.py --rate 200 --duration-s 30``
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
import contextlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any, Final

import asyncpg
from redis.asyncio import Redis

from acme_cli.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    child_preexec,
    free_port,
)
from acme_cli.migrations import migrate
from acme_runtime.channels import EVENTS_STREAM
from bench.loadgen import (
    DEFAULT_CONNECTIONS,
    MAX_DURATION_S,
    MAX_RATE_PER_S,
    LoadResult,
    http_get_status,
    install_uvloop,
    run_load,
)

HOST: Final = "127.0.0.1"
RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
MAX_WARMUP_S: Final = 60.0
READY_TIMEOUT_S: Final = 60.0
_READY_POLL_S: Final = 0.1
_STOP_GRACE_S: Final = 20.0
_STREAM_PAGE: Final = 1_000
_STREAM_POLL_S: Final = 0.2
# Per-request rows go into the JSON only up to this many requests, to keep files readable.
_MAX_RECORD_ROWS: Final = 200_000
_LOG_TAIL_BYTES: Final = 4 * 1024 * 1024
_LOG_SAMPLES: Final = 5
_SLOWEST_SHOWN: Final = 5
_PLAIN_LEVELS: Final = frozenset({"debug", "info", "warning", "error", "critical"})
_CLOCK_TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK")


def _acme(*args: str) -> list[str]:
    return [sys.executable, "-m", "acme_cli.main", *args]


# --- CPU accounting from /proc ------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after it.
    return [raw[raw.index("(") + 1 : raw.rindex(")")], *raw[raw.rindex(")") + 2 :].split()]


def _process_table() -> dict[int, list[str]]:
    table: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat_fields(int(entry))) is not None:
            table[int(entry)] = fields
    return table


def _tree(table: dict[int, list[str]], root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, fields in table.items():
        children.setdefault(int(fields[2]), []).append(pid)
    members, frontier = [], [root] if root in table else []
    # Bounded by the number of processes: each pid is visited at most once.
    seen: set[int] = set()
    while frontier and len(seen) <= len(table):
        pid = frontier.pop()
        if pid in seen:
            continue
        seen.add(pid)
        members.append(pid)
        frontier.extend(children.get(pid, ()))
    return members


def _tree_cpu_s(table: dict[int, list[str]], root: int) -> tuple[float, int]:
    """CPU seconds of a process tree, and how many processes it has.

    utime+stime of every live member plus cutime+cstime (children it has reaped): a postgres
    backend that exits during the window still counts, through its parent.
    """
    members = _tree(table, root)
    # /proc/<pid>/stat after comm: state=1 ppid=2 ... utime=12 stime=13 cutime=14 cstime=15.
    ticks = sum(sum(int(table[pid][i]) for i in (12, 13, 14, 15)) for pid in members)
    return ticks / _CLOCK_TICKS_PER_S, len(members)


def _own_cpu_s() -> float:
    # Only this process's own threads: children it reaped (pg_isready at start-up) are not load.
    fields = _stat_fields(os.getpid())
    return 0.0 if fields is None else (int(fields[12]) + int(fields[13])) / _CLOCK_TICKS_PER_S


def _machine_busy_s() -> float:
    """CPU seconds all processes on the machine spent (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already
    # inside user/nice, so only the first eight count, minus idle and iowait.
    busy = sum(values[:8]) - values[3] - values[4]
    return busy / _CLOCK_TICKS_PER_S


@dataclass
class _CpuSnapshot:
    at_s: float
    by_name: dict[str, float]
    processes: dict[str, int]
    machine_busy_s: float


# --- the system under test ----------------------------------------------------------------


@dataclass
class _Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]


@dataclass
class _Stack:
    """The system as `acme up` runs it, with every process's pid known to us."""

    root: Path
    http_port: int
    postgres: EmbeddedPostgres = field(init=False)
    redis: EmbeddedRedis = field(init=False)
    children: list[_Child] = field(default_factory=list)
    database_url: str = ""
    redis_url: str = ""

    def __post_init__(self) -> None:
        # Durable PostgreSQL and AOF Redis, as `acme up` runs them: fsync cost is part of intake.
        self.postgres = EmbeddedPostgres(self.root / "postgres")
        self.redis = EmbeddedRedis(self.root / "redis", appendonly=True)

    def start(self) -> None:
        self.database_url = self.postgres.start()
        self.redis_url = self.redis.start()
        asyncio.run(migrate(self.database_url))
        sink_port = free_port()
        env = {
            **os.environ,
            "ACME_DATABASE_URL": self.database_url,
            "ACME_REDIS_URL": self.redis_url,
            "ACME_SMTP_URL": f"smtp://{HOST}:{sink_port}",
            "ACME_HTTP_HOST": HOST,
            "ACME_HTTP_PORT": str(self.http_port),
            "ACME_LOG_FORMAT": "json",
        }
        logs = self.root / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        mail = str(self.root / "mail")
        self._spawn("smtp-sink", _acme("smtp-sink", "--mail-dir", mail, "--port", str(sink_port)),
                    env, logs)  # fmt: skip
        self._spawn("api", _acme("api"), env, logs)
        self._spawn("relay", _acme("relay"), env, logs)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        log_path = logs / f"{name}.log"
        log = log_path.open("ab")
        process = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Dies with us even on kill -9; its own session keeps a terminal's Ctrl-C away, so
            # we decide the order things stop in.
            preexec_fn=child_preexec(),
            start_new_session=True,
        )
        self.children.append(_Child(name, process, log_path, log))

    def dead_children(self) -> list[_Child]:
        return [c for c in self.children if c.process.poll() is not None]

    def roots(self) -> dict[str, int]:
        """The pid of each tracked process (tree): the services, PostgreSQL and Redis."""
        pids = {c.name: c.process.pid for c in self.children}
        me = os.getpid()
        # The embedded servers are children of this process (forked by its spawner thread).
        for pid, fields in _process_table().items():
            if int(fields[2]) != me:
                continue
            if fields[0] == "postgres":
                pids["postgres"] = pid
            elif fields[0].startswith("redis-server"):
                pids["redis"] = pid
        return pids

    def stop(self) -> None:
        # The services first (they drain in-flight work), the SMTP sink last, then the servers.
        ordered = [c for c in self.children if c.name != "smtp-sink"]
        ordered += [c for c in self.children if c.name == "smtp-sink"]
        for group in (ordered[:-1], ordered[-1:]):
            for child in group:
                if child.process.poll() is None:
                    child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + _STOP_GRACE_S
            for child in group:
                try:
                    child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()
        for child in self.children:
            child.log.close()
        self.redis.stop()
        self.postgres.stop()

    def snapshot(self, roots: dict[str, int]) -> _CpuSnapshot:
        table = _process_table()
        by_name: dict[str, float] = {}
        processes: dict[str, int] = {}
        for name, pid in roots.items():
            by_name[name], processes[name] = _tree_cpu_s(table, pid)
        by_name["generator"], processes["generator"] = _own_cpu_s(), 1
        return _CpuSnapshot(time.monotonic(), by_name, processes, _machine_busy_s())


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 64 * 1024))
            return "\n".join(log.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _log_levels(path: Path) -> tuple[dict[str, int], list[str]]:
    """Lines per level in a JSON-lines log, and a few warning/error lines as samples."""
    counts: dict[str, int] = {}
    samples: list[str] = []
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
            text = log.read().decode("utf-8", "replace")
    except OSError:
        return counts, samples
    for line in text.splitlines():
        try:
            level = str(json.loads(line).get("level", "?"))
        except (ValueError, AttributeError):
            # uvicorn's own lines come through stdlib logging as "INFO - ..."; the rest is
            # plain text such as tracebacks.
            prefix = line.split(" - ", 1)[0].strip().lower()
            level = prefix if prefix in _PLAIN_LEVELS else "unparsed"
        counts[level] = counts.get(level, 0) + 1
        if level not in ("info", "debug") and len(samples) < _LOG_SAMPLES:
            samples.append(line[:300])
    return counts, samples


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


def _text(value: bytes | str | None) -> str:
    # redis-py types stream fields as bytes or str (decode_responses); we connect without it.
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _entry_ms(entry_id: str) -> int:
    # A stream entry id is "<Redis server time in ms>-<sequence>".
    return int(entry_id.split("-", 1)[0])


def _iso_ms(text: str) -> float:
    return datetime.fromisoformat(text).timestamp() * 1000


async def _check_stream(redis: Redis, result: LoadResult, timeout_s: float) -> _StreamCheck:
    """Wait until every accepted order's event is on the stream (or the timeout passes)."""
    wanted = {r.order_id: r.created_at for r in result.ok_records if r.order_id}
    first_seen_ms: dict[str, int] = {}
    counts: dict[str, int] = {}
    entries = 0
    start = time.monotonic()
    cursor = "-"
    max_pages = max(10, 4 * (len(wanted) // _STREAM_PAGE + 1))
    # Bounded twice: by the timeout and by pages read per poll.
    while True:
        for _ in range(max_pages):
            page = await redis.xrange(EVENTS_STREAM, min=cursor, max="+", count=_STREAM_PAGE)
            if not page:
                break
            for entry_id, fields in page:
                entries += 1
                raw_order_id = (fields or {}).get(b"order_id", b"")
                order_id = _text(raw_order_id)
                counts[order_id] = counts.get(order_id, 0) + 1
                first_seen_ms.setdefault(order_id, _entry_ms(_text(entry_id)))
            cursor = "(" + _text(page[-1][0])
        if all(o in first_seen_ms for o in wanted) or time.monotonic() - start > timeout_s:
            break
        await asyncio.sleep(_STREAM_POLL_S)
    found = [o for o in wanted if o in first_seen_ms]
    lags = sorted(
        first_seen_ms[o] - _iso_ms(created) for o in found if (created := wanted[o]) is not None
    )

    def pick(fraction: float) -> float:
        return lags[max(0, math.ceil(fraction * len(lags)) - 1)] if lags else math.nan

    return _StreamCheck(
        accepted=len(wanted),
        found=len(found),
        missing=len(wanted) - len(found),
        duplicates=sum(counts.get(o, 0) - 1 for o in found),
        entries=entries,
        waited_s=round(time.monotonic() - start, 3),
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
    before: _CpuSnapshot
    after: _CpuSnapshot
    stream: _StreamCheck
    database: dict[str, Any]


async def _wait_ready(stack: _Stack) -> float:
    start = time.monotonic()
    while time.monotonic() - start < READY_TIMEOUT_S:
        dead = stack.dead_children()
        if dead:
            child = dead[0]
            raise RuntimeError(
                f"{child.name} exited with {child.process.returncode} during start-up; "
                f"last lines of {child.log_path}:\n{_log_tail(child.log_path)}"
            )
        if await http_get_status(HOST, stack.http_port, "/health/ready") == 200:
            return time.monotonic() - start
        await asyncio.sleep(_READY_POLL_S)
    raise RuntimeError(f"/health/ready not 200 after {READY_TIMEOUT_S:g} s")


async def _measure(stack: _Stack, args: argparse.Namespace) -> _Measurement:
    ready_s = await _wait_ready(stack)
    print(f"system ready in {ready_s:.1f} s; warming up {args.warmup_s:g} s ...", flush=True)
    warmup = None
    if args.warmup_s > 0:
        warmup = await run_load(
            HOST, stack.http_port, args.rate, args.warmup_s, args.connections,
            drain_timeout_s=args.drain_timeout_s, key_prefix=f"warmup-{os.getpid()}", seed=1,
        )  # fmt: skip
    roots = stack.roots()
    print(f"measuring {args.rate:g}/s for {args.duration_s:g} s ...", flush=True)
    before = stack.snapshot(roots)
    load = await run_load(
        HOST, stack.http_port, args.rate, args.duration_s, args.connections,
        drain_timeout_s=args.drain_timeout_s, key_prefix=f"measure-{os.getpid()}", seed=2,
    )  # fmt: skip
    after = stack.snapshot(roots)
    redis = Redis.from_url(stack.redis_url, socket_timeout=5)
    try:
        stream = await _check_stream(redis, load, args.stream_timeout_s)
    finally:
        await redis.aclose()
    database = await _database_counts(stack.database_url)
    return _Measurement(warmup, load, before, after, stream, database)


def _cpu_table(m: _Measurement) -> dict[str, Any]:
    window_s = m.after.at_s - m.before.at_s
    accepted = max(1, len(m.load.ok_records))
    rows: dict[str, Any] = {}
    for name, after_s in m.after.by_name.items():
        used_s = max(0.0, after_s - m.before.by_name.get(name, after_s))
        rows[name] = {
            "cpu_s": round(used_s, 3),
            "cpu_ms_per_order": round(used_s * 1000 / accepted, 4),
            "share_of_one_core": round(used_s / window_s, 3),
            "processes": m.after.processes.get(name, 0),
        }
    tracked_s = sum(r["cpu_s"] for r in rows.values())
    machine_s = m.after.machine_busy_s - m.before.machine_busy_s
    return {
        "window_s": round(window_s, 3),
        "accepted_orders": len(m.load.ok_records),
        "by_process": rows,
        "tracked_total_s": round(tracked_s, 3),
        "tracked_ms_per_order": round(tracked_s * 1000 / accepted, 4),
        "machine_busy_s": round(machine_s, 3),
        # Other engineers' test runs, the kernel, anything not ours: it shares our cores.
        "other_processes_s": round(max(0.0, machine_s - tracked_s), 3),
    }


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


def _git_revision() -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    root = str(Path(__file__).resolve().parent.parent)
    try:
        head = subprocess.run(
            [git, "-C", root, "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            [git, "-C", root, "status", "--porcelain"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{'+dirty' if dirty else ''}"


def _loadavg() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/loadavg").read_text().strip()
    return "?"


def _nproc() -> int:
    return len(os.sched_getaffinity(0))


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
        f"CPU during the measured window ({cpu['window_s']:.1f} s, "
        f"{cpu['accepted_orders']} accepted orders):",
        f"  {'process':<15}{'CPU-s':>8}{'CPU-ms/order':>14}{'of 1 core':>11}",
    ]
    for name, row in cpu["by_process"].items():
        label = f"{name} ({row['processes']})" if row["processes"] > 1 else name
        lines.append(
            f"  {label:<15}{row['cpu_s']:>8.2f}{row['cpu_ms_per_order']:>14.3f}"
            f"{row['share_of_one_core']:>11.0%}"
        )
    lines.append(
        f"  {'ours total':<15}{cpu['tracked_total_s']:>8.2f}{cpu['tracked_ms_per_order']:>14.3f}"
    )
    lines.append(
        f"  machine busy {cpu['machine_busy_s']:.2f} CPU-s of "
        f"{cpu['window_s'] * report['machine']['nproc']:.1f} available; other processes "
        f"{cpu['other_processes_s']:.2f} CPU-s"
    )
    s = m.stream
    verdict = "OK" if s.missing == 0 else f"MISSING {s.missing}"
    lines.append(
        f"stream    {verdict}: {s.found}/{s.accepted} accepted orders on {EVENTS_STREAM} "
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


def _raise_interrupt(_signum: int, _frame: object) -> None:
    # SIGTERM ends the run like Ctrl-C does, so the same cleanup runs.
    raise KeyboardInterrupt


def _report(args: argparse.Namespace, m: _Measurement, stack: _Stack, extra: dict[str, Any]
            ) -> dict[str, Any]:  # fmt: skip
    logs = {}
    for child in stack.children:
        levels, samples = _log_levels(child.log_path)
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
        "cpu": _cpu_table(m),
        "stream": m.stream.__dict__,
        "database": m.database,
        "logs": logs,
        "records": _record_rows(m.load),
    }


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    # A second Ctrl-C must not cut the clean-up short (children would be SIGKILLed instead).
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
    signal.signal(signal.SIGTERM, _raise_interrupt)
    stack = _Stack(root, free_port())
    extra: dict[str, Any] = {
        "command": command,
        "started": datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "nproc": _nproc(),
            "python": platform.python_version(),
            "loadavg_before": _loadavg(),
        },
        "git": _git_revision(),
        "event_loop": loop_name,
        "data_dir": str(root),
    }
    print(f"starting the system in {root} (nproc {_nproc()}) ...", flush=True)
    try:
        stack.start()
        measurement = asyncio.run(_measure(stack, args))
        extra["machine"]["loadavg_after"] = _loadavg()
        report = _report(args, measurement, stack, extra)
    except KeyboardInterrupt:
        print("\nintake: interrupted; stopping the system ...", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - report, then stop the stack below
        print(f"intake: failed: {exc}", file=sys.stderr)
        for child in stack.children:
            print(f"--- {child.log_path}\n{_log_tail(child.log_path, 10)}", file=sys.stderr)
        return 1
    finally:
        with _signals_ignored():
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
