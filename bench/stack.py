"""The system under test as the benchmarks run it, and how they account for its CPU.

Shared by bench/intake.py, bench/e2e.py and bench/notifier_throughput.py. `Stack` starts an
embedded PostgreSQL (migrated) and Redis (AOF, as `acme up` runs it) on a temporary folder,
then whichever of the SMTP sink, `acme api`, `acme relay` and `acme notifier` replicas a
benchmark asks for, each as its own child process with its log in `<root>/logs/`. It knows
every pid, so `snapshot()` can read each process tree's CPU time from /proc, and it stops
everything in order (services, then the sink, then the servers).

Also here: the per-process CPU table, log-level counts for the child logs, a scan of the
events stream, and small facts about the machine (load average, git revision).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Final

from redis.asyncio import Redis

from acme_cli.embedded import EmbeddedPostgres, EmbeddedRedis, child_preexec, free_port
from acme_cli.migrations import migrate
from acme_runtime.channels import EVENTS_STREAM
from bench.loadgen import http_get_status

__all__ = [
    "HOST",
    "RESULTS_DIR",
    "SINK_RECORDER",
    "Child",
    "CpuSnapshot",
    "MailLog",
    "Stack",
    "StreamScan",
    "acme_argv",
    "cpu_table",
    "format_cpu_table",
    "git_revision",
    "iso_ms",
    "loadavg",
    "log_events",
    "log_levels",
    "log_tail",
    "nearest_rank",
    "nproc",
    "raise_interrupt",
    "rss_mb",
    "scan_stream",
    "signals_ignored",
    "user_system_s",
]

HOST: Final = "127.0.0.1"
RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
#: The SMTP sink process that records `order_id,received_at,message_id` per accepted message.
SINK_RECORDER: Final = Path(__file__).resolve().parent / "sink_recorder.py"
_STOP_GRACE_S: Final = 20.0
_WAIT_POLL_S: Final = 0.1
_LOG_HEAD_BYTES: Final = 1024 * 1024
_MAX_LOG_LINES: Final = 5_000_000
_LOG_SAMPLES: Final = 5
_PLAIN_LEVELS: Final = frozenset({"debug", "info", "warning", "error", "critical"})
_STREAM_PAGE: Final = 1_000
_STREAM_POLL_S: Final = 0.2
_MAIL_POLL_S: Final = 0.1
# At most this much of the recorder's file is read per poll (~50 bytes a line).
_MAIL_READ_BYTES: Final = 64 * 1024 * 1024
_CLOCK_TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK")
#: Children whose names start with this are SMTP sinks: they are stopped last.
_SINK_PREFIXES: Final = ("smtp-sink", "sink")


def acme_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "acme_cli.main", *args]


def nearest_rank(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (NaN when there are none)."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


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


def user_system_s(roots: dict[str, int]) -> dict[str, tuple[float, float]]:
    """User and system CPU seconds so far of each root's process tree (like `snapshot`, split:
    the system part is time in the kernel, for a service mostly its socket system calls)."""
    table = _process_table()
    out = {}
    for name, pid in roots.items():
        members = _tree(table, pid)
        if members:
            # After comm: utime=12 stime=13 cutime=14 cstime=15 (state=1).
            user = sum(int(table[m][12]) + int(table[m][14]) for m in members)
            system = sum(int(table[m][13]) + int(table[m][15]) for m in members)
            out[name] = (user / _CLOCK_TICKS_PER_S, system / _CLOCK_TICKS_PER_S)
    return out


def _tree_cpu_s(table: dict[int, list[str]], root: int) -> tuple[float, int]:
    """CPU seconds of a process tree, and how many processes it has.

    utime+stime of every live member plus cutime+cstime (children it has reaped): a postgres
    backend that exits during the window still counts, through its parent.
    """
    members = _tree(table, root)
    # /proc/<pid>/stat after comm: state=1 ppid=2 ... utime=12 stime=13 cutime=14 cstime=15.
    ticks = sum(sum(int(table[pid][i]) for i in (12, 13, 14, 15)) for pid in members)
    return ticks / _CLOCK_TICKS_PER_S, len(members)


def rss_mb(pid: int) -> float | None:
    """Resident set size of one process (VmRSS in /proc/<pid>/status), in MiB; None if gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


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
class CpuSnapshot:
    at_s: float
    by_name: dict[str, float]
    processes: dict[str, int]
    machine_busy_s: float


def cpu_table(before: CpuSnapshot, after: CpuSnapshot, units: int, unit: str = "order"
              ) -> dict[str, Any]:  # fmt: skip
    """CPU each tracked process spent between two snapshots, in total and per `unit`."""
    window_s = max(1e-9, after.at_s - before.at_s)
    per = max(1, units)
    rows: dict[str, Any] = {}
    for name, after_s in after.by_name.items():
        used_s = max(0.0, after_s - before.by_name.get(name, after_s))
        rows[name] = {
            "cpu_s": round(used_s, 3),
            f"cpu_ms_per_{unit}": round(used_s * 1000 / per, 4),
            "share_of_one_core": round(used_s / window_s, 3),
            "processes": after.processes.get(name, 0),
        }
    tracked_s = sum(r["cpu_s"] for r in rows.values())
    machine_s = after.machine_busy_s - before.machine_busy_s
    return {
        "window_s": round(window_s, 3),
        f"{unit}s": units,
        "unit": unit,
        "by_process": rows,
        "tracked_total_s": round(tracked_s, 3),
        f"tracked_ms_per_{unit}": round(tracked_s * 1000 / per, 4),
        "machine_busy_s": round(machine_s, 3),
        # Other engineers' test runs, the kernel, anything not ours: it shares our cores.
        "other_processes_s": round(max(0.0, machine_s - tracked_s), 3),
    }


def format_cpu_table(cpu: dict[str, Any], cores: int) -> list[str]:
    """The CPU table as aligned text lines."""
    unit = cpu["unit"]
    per = f"CPU-ms/{unit}"
    lines = [
        f"CPU during the measured window ({cpu['window_s']:.1f} s, {cpu[unit + 's']} {unit}s):",
        f"  {'process':<15}{'CPU-s':>8}{per:>16}{'of 1 core':>11}",
    ]
    for name, row in cpu["by_process"].items():
        label = f"{name} ({row['processes']})" if row["processes"] > 1 else name
        lines.append(
            f"  {label:<15}{row['cpu_s']:>8.2f}{row[f'cpu_ms_per_{unit}']:>16.3f}"
            f"{row['share_of_one_core']:>11.0%}"
        )
    lines.append(
        f"  {'ours total':<15}{cpu['tracked_total_s']:>8.2f}{cpu[f'tracked_ms_per_{unit}']:>16.3f}"
    )
    lines.append(
        f"  machine busy {cpu['machine_busy_s']:.2f} CPU-s of {cpu['window_s'] * cores:.1f} "
        f"available; other processes {cpu['other_processes_s']:.2f} CPU-s"
    )
    return lines


# --- the system under test ----------------------------------------------------------------


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]


@dataclass
class Stack:
    """The system as `acme up` runs it, with every process's pid known to us.

    Call `start_servers()` first (PostgreSQL, Redis, migrations), then a sink, then the
    services the benchmark needs; `stop()` always, also after a failed start.
    """

    root: Path
    postgres: EmbeddedPostgres = field(init=False)
    redis: EmbeddedRedis = field(init=False)
    children: list[Child] = field(default_factory=list)
    database_url: str = ""
    redis_url: str = ""
    smtp_url: str = ""
    sink_port: int = 0
    http_port: int = 0

    def __post_init__(self) -> None:
        # Durable PostgreSQL and AOF Redis, as `acme up` runs them: fsync cost is part of it.
        self.postgres = EmbeddedPostgres(self.root / "postgres")
        self.redis = EmbeddedRedis(self.root / "redis", appendonly=True)

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def start_servers(self) -> None:
        self.database_url = self.postgres.start()
        self.redis_url = self.redis.start()
        asyncio.run(migrate(self.database_url))
        self.logs_dir.mkdir(parents=True, exist_ok=True)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a service: ours, plus the URLs and ports of the stack."""
        env = {
            **os.environ,
            "ACME_DATABASE_URL": self.database_url,
            "ACME_REDIS_URL": self.redis_url,
            "ACME_LOG_FORMAT": "json",
        }
        if self.smtp_url:
            env["ACME_SMTP_URL"] = self.smtp_url
        if self.http_port:
            env["ACME_HTTP_HOST"] = HOST
            env["ACME_HTTP_PORT"] = str(self.http_port)
        return {**env, **(extra or {})}

    def start_acme_sink(self) -> None:
        """`acme smtp-sink`, storing every message as an .eml file (as `acme up` does)."""
        self.sink_port = free_port()
        self.smtp_url = f"smtp://{HOST}:{self.sink_port}"
        mail = str(self.root / "mail")
        self.spawn("smtp-sink", acme_argv("smtp-sink", "--mail-dir", mail, "--port",
                                          str(self.sink_port)))  # fmt: skip

    def start_recorder_sink(self, out_path: Path, *, uvloop: bool = True,
                            extra_args: list[str] | None = None) -> Child:  # fmt: skip
        """bench/sink_recorder.py: appends `order_id,received_at,message_id` per message.

        It creates `out_path` only once it listens: `wait_file` on it is the readiness check.
        SIGUSR1 starts an SMTP outage in it and SIGUSR2 ends it (`--outage-mode` in
        `extra_args` says what the outage looks like).
        """
        self.sink_port = free_port()
        self.smtp_url = f"smtp://{HOST}:{self.sink_port}"
        argv = [sys.executable, str(SINK_RECORDER), "--port", str(self.sink_port),
                "--out", str(out_path), *(extra_args or [])]  # fmt: skip
        if not uvloop:
            argv.append("--no-uvloop")
        return self.spawn("sink", argv)

    def start_api(self, extra_env: dict[str, str] | None = None) -> Child:
        self.http_port = free_port()
        return self.spawn("api", acme_argv("api"), extra_env)

    def start_relay(self, extra_env: dict[str, str] | None = None) -> Child:
        return self.spawn("relay", acme_argv("relay"), extra_env)

    def start_notifiers(self, count: int, extra_env: dict[str, str] | None = None) -> list[Child]:
        started = []
        for index in range(1, count + 1):
            env = {"ACME_CONSUMER_NAME": f"notifier-{index}", **(extra_env or {})}
            started.append(self.spawn(f"notifier-{index}", acme_argv("notifier"), env))
        return started

    def spawn(self, name: str, argv: list[str], extra_env: dict[str, str] | None = None
              ) -> Child:  # fmt: skip
        log_path = self.logs_dir / f"{name}.log"
        log = log_path.open("ab")
        # Services that serve Prometheus metrics get their own loopback port each: the default
        # (9100 on all interfaces) would collide between our processes and anyone else's.
        ports = {"ACME_METRICS_HOST": HOST, "ACME_METRICS_PORT": str(free_port())}
        process = subprocess.Popen(
            argv,
            env=self.env({**ports, **(extra_env or {})}),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Dies with us even on kill -9; its own session keeps a terminal's Ctrl-C away, so
            # we decide the order things stop in.
            preexec_fn=child_preexec(),
            start_new_session=True,
        )
        child = Child(name, process, log_path, log)
        self.children.append(child)
        return child

    def dead_children(self) -> list[Child]:
        return [c for c in self.children if c.process.poll() is not None]

    def raise_if_dead(self, during: str) -> None:
        dead = self.dead_children()
        if dead:
            child = dead[0]
            raise RuntimeError(
                f"{child.name} exited with {child.process.returncode} {during}; "
                f"last lines of {child.log_path}:\n{log_tail(child.log_path)}"
            )

    async def wait_file(self, path: Path, timeout_s: float) -> float:
        """Wait until `path` exists (a child's readiness signal); seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            self.raise_if_dead("during start-up")
            if path.exists():  # noqa: ASYNC240 - one local stat per 100 ms poll
                return time.monotonic() - start
            await asyncio.sleep(_WAIT_POLL_S)
        raise RuntimeError(f"{path} did not appear within {timeout_s:g} s")

    async def wait_log(self, child: Child, text: str, timeout_s: float) -> float:
        """Wait until `text` appears in a child's log (e.g. "notifier_started")."""
        start = time.monotonic()
        needle = text.encode()
        while time.monotonic() - start < timeout_s:
            self.raise_if_dead("during start-up")
            with contextlib.suppress(OSError), child.log_path.open("rb") as log:
                # Start-up lines come first: the head of the log is enough.
                if needle in log.read(_LOG_HEAD_BYTES):
                    return time.monotonic() - start
            await asyncio.sleep(_WAIT_POLL_S)
        raise RuntimeError(f"{child.name} did not log {text!r} within {timeout_s:g} s")

    async def wait_api_ready(self, timeout_s: float) -> float:
        """Wait until the API's /health/ready answers 200; seconds waited."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            self.raise_if_dead("during start-up")
            if await http_get_status(HOST, self.http_port, "/health/ready") == 200:
                return time.monotonic() - start
            await asyncio.sleep(_WAIT_POLL_S)
        raise RuntimeError(f"/health/ready not 200 after {timeout_s:g} s")

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
        sinks = [c for c in self.children if c.name.startswith(_SINK_PREFIXES)]
        services = [c for c in self.children if c not in sinks]
        for group in (services, sinks):
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

    def remove_data(self) -> None:
        """Delete the databases and mail (after `stop()`); logs and other files stay."""
        for name in ("postgres", "redis", "mail"):
            shutil.rmtree(self.root / name, ignore_errors=True)

    def snapshot(self, roots: dict[str, int], self_name: str = "generator") -> CpuSnapshot:
        """CPU seconds so far of each root's process tree, and of this process as `self_name`."""
        table = _process_table()
        by_name: dict[str, float] = {}
        processes: dict[str, int] = {}
        for name, pid in roots.items():
            by_name[name], processes[name] = _tree_cpu_s(table, pid)
        by_name[self_name], processes[self_name] = _own_cpu_s(), 1
        return CpuSnapshot(time.monotonic(), by_name, processes, _machine_busy_s())


# --- logs ---------------------------------------------------------------------------------


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        with path.open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 64 * 1024))
            return "\n".join(log.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _log_lines(path: Path) -> Iterator[str]:
    """The lines of a log, at most _MAX_LOG_LINES of them (a runaway log stays bounded)."""
    try:
        with path.open("rb") as log:
            for _, raw in zip(range(_MAX_LOG_LINES), log, strict=False):
                yield raw.decode("utf-8", "replace").rstrip("\n")
    except OSError:
        return


def _line_level(line: str) -> tuple[str, dict[str, Any] | None]:
    try:
        document = json.loads(line)
    except ValueError:
        document = None
    if isinstance(document, dict):
        return str(document.get("level", "?")), document
    # uvicorn's own lines come through stdlib logging as "INFO - ..."; the rest is plain text
    # such as tracebacks.
    prefix = line.split(" - ", 1)[0].strip().lower()
    return (prefix if prefix in _PLAIN_LEVELS else "unparsed"), None


def log_levels(path: Path) -> tuple[dict[str, int], list[str]]:
    """Lines per level in a JSON-lines log, and a few warning/error lines as samples."""
    counts: dict[str, int] = {}
    samples: list[str] = []
    for line in _log_lines(path):
        level, _ = _line_level(line)
        counts[level] = counts.get(level, 0) + 1
        if level not in ("info", "debug") and len(samples) < _LOG_SAMPLES:
            samples.append(line[:300])
    return counts, samples


def log_events(path: Path) -> dict[str, int]:
    """Lines per structlog `event` name ("email_sent", "duplicate_suppressed", ...)."""
    counts: dict[str, int] = {}
    for line in _log_lines(path):
        _, document = _line_level(line)
        if document is not None:
            event = str(document.get("event", "?"))[:80]
            counts[event] = counts.get(event, 0) + 1
    return counts


# --- what the sink recorded ---------------------------------------------------------------


@dataclass
class MailLog:
    """Reads the sink recorder's file incrementally: complete lines only, bounded per poll."""

    path: Path
    offset: int = 0
    lines: int = 0
    without_order_id: int = 0
    first_at: dict[str, float] = field(default_factory=dict)
    last_at: dict[str, float] = field(default_factory=dict)
    copies: dict[str, int] = field(default_factory=dict)

    def poll(self) -> int:
        """Take in the lines appended since the last poll; how many there were."""
        try:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                data = log.read(_MAIL_READ_BYTES)
        except OSError:
            return 0
        complete = data.rfind(b"\n") + 1
        self.offset += complete
        new = 0
        for raw in data[:complete].splitlines():
            parts = raw.decode("ascii", "replace").split(",")
            if len(parts) < 2:
                continue
            new += 1
            order_id, received_at = parts[0], float(parts[1])
            if order_id == "-":
                self.without_order_id += 1
                continue
            self.copies[order_id] = self.copies.get(order_id, 0) + 1
            self.first_at.setdefault(order_id, received_at)
            self.last_at[order_id] = received_at
        self.lines += new
        return new

    async def wait_for(self, wanted: set[str], timeout_s: float, stack: Stack) -> float:
        """Poll until every wanted order has an e-mail, or `timeout_s`; seconds waited."""
        start = time.monotonic()
        # Bounded by the timeout: one poll per _MAIL_POLL_S.
        while True:
            self.poll()
            if wanted.issubset(self.first_at.keys()) or time.monotonic() - start >= timeout_s:
                return time.monotonic() - start
            stack.raise_if_dead("while waiting for e-mails")
            await asyncio.sleep(_MAIL_POLL_S)


# --- the events stream --------------------------------------------------------------------


@dataclass
class StreamScan:
    """Which of the wanted orders' events are on the stream, and when they first got there."""

    first_seen_ms: dict[str, int]
    counts: dict[str, int]
    entries: int
    waited_s: float


def _text(value: bytes | str | None) -> str:
    # redis-py types stream fields as bytes or str (decode_responses); we connect without it.
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _entry_ms(entry_id: str) -> int:
    # A stream entry id is "<Redis server time in ms>-<sequence>".
    return int(entry_id.split("-", 1)[0])


def iso_ms(text: str) -> float:
    """An ISO 8601 timestamp with offset, as Unix milliseconds."""
    return datetime.fromisoformat(text).timestamp() * 1000


async def scan_stream(redis: Redis, wanted: set[str], timeout_s: float) -> StreamScan:
    """Read the events stream until every wanted order id is on it (or the timeout passes)."""
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
                order_id = _text((fields or {}).get(b"order_id", b""))
                counts[order_id] = counts.get(order_id, 0) + 1
                first_seen_ms.setdefault(order_id, _entry_ms(_text(entry_id)))
            cursor = "(" + _text(page[-1][0])
        if all(o in first_seen_ms for o in wanted) or time.monotonic() - start > timeout_s:
            break
        await asyncio.sleep(_STREAM_POLL_S)
    return StreamScan(first_seen_ms, counts, entries, round(time.monotonic() - start, 3))


# --- the machine and the run --------------------------------------------------------------


def git_revision() -> str | None:
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


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/loadavg").read_text().strip()
    return "?"


def nproc() -> int:
    return len(os.sched_getaffinity(0))


def raise_interrupt(_signum: int, _frame: object) -> None:
    # SIGTERM ends the run like Ctrl-C does, so the same cleanup runs.
    raise KeyboardInterrupt


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    # A second Ctrl-C must not cut the clean-up short (children would be SIGKILLed instead).
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
