"""The system under test as the benchmarks and the chaos harness run it.

Shared by bench/run.py, bench/intake.py, bench/e2e.py, bench/notifier_throughput.py and
tests/chaos/harness.py. `Stack` starts an embedded PostgreSQL (migrated) and Redis (AOF, as
`acme up` runs them) on a temporary folder, then whichever of the SMTP sink, `acme api`,
`acme relay` and `acme notifier` replicas a benchmark asks for, each a child process of
acme_cli/processes.py's supervisor with its log in `<root>/logs/`. It knows every pid, so
`snapshot()` can take each process tree's CPU time (bench/cpu.py), and it stops everything in
order (services, then the sink, then the servers).

Also here: log-level counts for the child logs, what the sink recorded, a scan of the events
stream, and small facts about the run (git revision, signal handling).
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from redis.asyncio import Redis

from acme_cli.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from acme_cli.migrations import migrate
from acme_cli.processes import Child, ProcessSupervisor, acme_argv, log_tail
from acme_orders.api_keys import issue_key
from acme_runtime.channels import Shard, shard, shards
from bench import cpu
from bench.loadgen import http_get_status

__all__ = [
    "HOST",
    "RESULTS_DIR",
    "SINK_KIND_ENV",
    "SINK_RECORDER",
    "Child",
    "MailLog",
    "Stack",
    "StreamScan",
    "acme_argv",
    "git_revision",
    "iso_ms",
    "log_events",
    "log_levels",
    "log_tail",
    "nearest_rank",
    "raise_interrupt",
    "scan_stream",
    "signals_ignored",
]

HOST: Final = "127.0.0.1"
RESULTS_DIR: Final = Path(__file__).resolve().parent / "results"
#: The SMTP sink process that records `order_id,received_at,message_id` per accepted message.
SINK_RECORDER: Final = Path(__file__).resolve().parent / "sink_recorder.py"
#: `lean` runs the recorder on bench/lean_sink.py (a fraction of aiosmtpd's CPU per message,
#: for throughput benchmarks on one box); anything else, aiosmtpd (acme_cli.smtp_sink).
SINK_KIND_ENV: Final = "ACME_BENCH_SINK"
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


def nearest_rank(sorted_values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of already sorted values (NaN when there are none)."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


# --- the system under test ----------------------------------------------------------------


@dataclass
class Stack:
    """The system as `acme up` runs it, with every process's pid known to us.

    Call `start_servers()` first (PostgreSQL, Redis, migrations), then a sink, then the
    services the benchmark needs; `stop()` always, also after a failed start.
    """

    root: Path
    postgres: EmbeddedPostgres = field(init=False)
    redis: EmbeddedRedis = field(init=False)
    processes: ProcessSupervisor = field(init=False)
    database_url: str = ""
    redis_url: str = ""
    smtp_url: str = ""
    sink_port: int = 0
    http_port: int = 0
    #: A key with both scopes, created with the schema: every load sends it.
    api_key: str = ""
    #: A Redis (or Redis Cluster) the caller runs: then no embedded Redis is started.
    external_redis_url: str = ""

    def __post_init__(self) -> None:
        # Durable PostgreSQL and AOF Redis, as `acme up` runs them: fsync cost is part of it.
        self.postgres = EmbeddedPostgres(self.root / "postgres")
        self.redis = EmbeddedRedis(self.root / "redis", appendonly=True)
        self.processes = ProcessSupervisor(self.root / "logs")

    @property
    def logs_dir(self) -> Path:
        return self.processes.logs_dir

    @property
    def children(self) -> list[Child]:
        return self.processes.children

    def start_servers(self) -> None:
        self.database_url = self.postgres.start()
        self.redis_url = self.external_redis_url or self.redis.start()
        asyncio.run(migrate(self.database_url))
        self.api_key = asyncio.run(issue_key(self.database_url, name="bench", operator="bench"))
        self.logs_dir.mkdir(parents=True, exist_ok=True)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a service: ours, plus the URLs and ports of the stack."""
        env = {
            **os.environ,
            "ACME_DATABASE_URL": self.database_url,
            "ACME_REDIS_URL": self.redis_url,
            "ACME_LOG_FORMAT": "json",
            # One key offers the whole load: the benches measure the system, not the per-key
            # rate limit (ADR 0021), which a scenario may still set through `extra`, and a run
            # through ACME_BENCH_API_RATE_PER_S (its cost: bench/ab.py --env-a ...).
            "ACME_API_RATE_PER_S": os.environ.get("ACME_BENCH_API_RATE_PER_S", "0"),
        }
        if self.smtp_url:
            env["ACME_SMTP_URL"] = self.smtp_url
        if self.http_port:
            env["ACME_HTTP_HOST"] = HOST
            env["ACME_HTTP_PORT"] = str(self.http_port)
        return {**env, **(extra or {})}

    def stream_shards(self) -> tuple[Shard, ...]:
        """The shards the services run with: ACME_STREAM_SHARDS of their environment (the
        bench's own, passed on), 1 when unset."""
        return shards(int(self.env().get("ACME_STREAM_SHARDS") or 1))

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
        if os.environ.get(SINK_KIND_ENV, "aiosmtpd") == "lean":
            argv.append("--lean")
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
        # Services that serve Prometheus metrics get their own loopback port each: the default
        # (9100 on all interfaces) would collide between our processes and anyone else's.
        ports = {"ACME_METRICS_HOST": HOST, "ACME_METRICS_PORT": str(free_port())}
        return self.processes.spawn(name, argv, self.env({**ports, **(extra_env or {})}))

    def metrics_port(self, name: str) -> int:
        """The metrics listener's port of the child `name` (the API's is not its HTTP port)."""
        (child,) = [c for c in self.children if c.name == name]
        return int(child.env["ACME_METRICS_PORT"])

    def dead_children(self) -> list[Child]:
        return self.processes.dead()

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
        return {**{c.name: c.process.pid for c in self.children}, **cpu.embedded_servers()}

    def stop(self) -> None:
        """The services first (they drain in-flight work), the SMTP sink last, then the
        servers."""
        self.processes.stop()
        if not self.external_redis_url:
            self.redis.stop()
        self.postgres.stop()

    def remove_data(self) -> None:
        """Delete the databases and mail (after `stop()`); logs and other files stay."""
        for name in ("postgres", "redis", "mail"):
            shutil.rmtree(self.root / name, ignore_errors=True)

    def snapshot(self, roots: dict[str, int], self_name: str = "generator") -> cpu.CpuSnapshot:
        """CPU seconds so far of each root's process tree, and of this process as `self_name`."""
        return cpu.snapshot(roots, self_name)


# --- logs ---------------------------------------------------------------------------------


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


async def scan_stream(
    redis: Redis, wanted: set[str], timeout_s: float, on: Sequence[Shard] = (shard(0),)
) -> StreamScan:
    """Read the events streams of the shards `on` until every wanted order id is on one (or
    the timeout passes)."""
    first_seen_ms: dict[str, int] = {}
    counts: dict[str, int] = {}
    entries = 0
    start = time.monotonic()
    cursors = {s.events: "-" for s in on}
    max_pages = max(10, 4 * (len(wanted) // _STREAM_PAGE + 1))
    # Bounded twice: by the timeout and by pages read per poll.
    while True:
        for stream, cursor in list(cursors.items()):
            for _ in range(max_pages):
                page = await redis.xrange(stream, min=cursor, max="+", count=_STREAM_PAGE)
                if not page:
                    break
                for entry_id, fields in page:
                    entries += 1
                    order_id = _text((fields or {}).get(b"order_id", b""))
                    counts[order_id] = counts.get(order_id, 0) + 1
                    first_seen_ms.setdefault(order_id, _entry_ms(_text(entry_id)))
                cursor = "(" + _text(page[-1][0])
            cursors[stream] = cursor
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
