"""The benchmark suite: one command runs one named scenario and writes a JSON result and a plot.

    .venv/bin/python bench/run.py SCENARIO [--out DIR] [--repeat N]

Every run starts the whole system on a fresh temporary folder as separate processes
(bench/stack.py: embedded durable PostgreSQL, Redis with AOF, `acme api`, `acme relay`,
`--notifiers` `acme notifier` replicas and the recording SMTP sink bench/sink_recorder.py),
offers orders open loop (bench/loadgen.py) and measures from the outside:

- POST latency from each request's *scheduled* time (no coordinated omission);
- end-to-end latency per order from the SMTP side: the sink's `received_at` (when it accepted
  DATA) minus the order's `created_at` from the POST response (same machine, same clock);
- once a second: every process's CPU time (/proc/<pid>/stat of each process tree), the
  notifier group's lag, pending count and oldest unread age (`acme_notify.probe.measure_stream`),
  the e-mails received so far and the live notifier replicas; every `--rss-every-s`: VmRSS of
  each service process (/proc/<pid>/status).

Scenarios (`--notifiers` replicas, 2 unless said otherwise):

  smoke            50/s for 3 s with 1 notifier: the CI smoke test (tests/bench/).
  steady-50        50/s for 60 s: the kata's mean rate.
  peak-200         200/s for 60 s: the kata's peak. Targets: POST p99 < 10 ms, e2e p50 < 50 ms,
                   e2e p99 < 500 ms, every e-mail delivered.
  sustain-500      500/s for 300 s: the end-to-end throughput target.
  max              ramps in 15 s steps until POST p99 > 50 ms, errors, or (end to end) e-mails
                   fall behind; first intake alone (API + relay: 200, 400, ... 2000/s), then the
                   whole system (100, 200, 300, ... /s). Reports the last good rate of each.
  outage-recovery  200/s; after 30 s the SMTP sink refuses connections for 180 s (36,000
                   e-mails of backlog), then comes back. Reports the oldest e-mail's e2e time
                   (SLA 300 s), the drain time, and what the circuit breaker did.
  soak             200/s for ACME_BENCH_SOAK_S seconds (600): RSS of every process every 10 s,
                   the maximum and the growth slope per process.
  tracing-cost     intake (API + relay) with tracing on (SDK, no exporter, every trace
                   recorded), sampled (parent-based 10 % ratio: OTEL_TRACES_SAMPLER) and off
                   (OTEL_SDK_DISABLED=true), interleaved, `--repeat` rounds: CPU-ms per order at
                   200/s and the throughput at saturation.
  profile-api      intake at saturation (1,000/s offered) with py-spy recording the API.

Before each run the machine must be quiet (1-minute load average < 1.0 and no other `pytest`
or `acme_cli.main` process): the suite waits up to `--quiet-timeout-s` (checking every 30 s),
then runs anyway and labels the result "provisional, machine busy". With `--repeat N` the
scenario runs N times (fresh system each time) and a summary JSON gives the median, min and max
of each headline figure.

Results: ``<out>/<scenario>-<timestamp>.json`` and ``.png`` (default out: bench/results/,
git-ignored); ``<out>/<scenario>-summary-<timestamp>.json`` with `--repeat`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if not __package__:
    # Run as a script (`python bench/run.py`): make `bench.*` importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shlex
import signal
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import asyncpg
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from redis.exceptions import RedisError

from acme_notify.probe import measure_stream
from bench.e2e import child_logs, database_state, redis_state, wait_ready
from bench.loadgen import DEFAULT_CONNECTIONS, LoadResult, install_uvloop, run_load
from bench.profiling import hot_spots, markdown_table, start_profile, stop_profile
from bench.stack import (
    HOST,
    RESULTS_DIR,
    Child,
    CpuSnapshot,
    MailLog,
    Stack,
    cpu_table,
    format_cpu_table,
    git_revision,
    iso_ms,
    loadavg,
    log_tail,
    nearest_rank,
    nproc,
    raise_interrupt,
    rss_mb,
    signals_ignored,
    user_system_s,
)

__all__ = ["SCENARIOS", "RunOptions", "main", "run_scenario", "save_report", "wait_until_quiet"]

SOAK_ENV: Final = "ACME_BENCH_SOAK_S"
DEFAULT_SOAK_S: Final = 600.0
MAX_RUN_S: Final = 3 * 3_600.0
#: run_load accepts at most 600 s; longer loads are offered as back-to-back chunks of this.
_CHUNK_S: Final = 300.0
_MAX_CHUNKS: Final = 40
_TICK_S: Final = 1.0
_QUIET_LOAD: Final = 1.0
_QUIET_POLL_S: Final = 30.0
_BUSY_MARKERS: Final = ("pytest", "acme_cli.main")
_READY_TIMEOUT_S: Final = 60.0
_PERCENTILES: Final = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999))
_MAX_SERIES_ROWS: Final = 20_000
# Processes whose memory the targets bound (MiB).
_RSS_LIMITS_MB: Final = {"api": 200.0, "notifier": 150.0}
_SLA_S: Final = 300.0


# --- scenarios ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # constant, max, outage, tracing, profile
    rate_per_s: float = 200.0
    duration_s: float = 60.0
    notifiers: int = 2
    warmup_s: float = 5.0
    rss_every_s: float = 1.0
    mail_drain_s: float = 120.0
    description: str = ""


def _soak_s() -> float:
    try:
        value = float(os.environ.get(SOAK_ENV, DEFAULT_SOAK_S))
    except ValueError:
        return DEFAULT_SOAK_S
    return min(max(value, 30.0), MAX_RUN_S)


def _scenarios() -> dict[str, Scenario]:
    return {
        s.name: s
        for s in (
            Scenario(
                "smoke",
                "constant",
                50.0,
                3.0,
                notifiers=1,
                warmup_s=1.0,
                mail_drain_s=60.0,
                description="CI smoke test",
            ),
            Scenario("steady-50", "constant", 50.0, 60.0, description="the mean rate"),
            Scenario("peak-200", "constant", 200.0, 60.0, description="the peak rate"),
            Scenario(
                "sustain-500",
                "constant",
                500.0,
                300.0,
                mail_drain_s=600.0,
                description="the end-to-end throughput target",
            ),
            Scenario("max", "max", description="ramp until latency, errors or e-mails break"),
            Scenario("outage-recovery", "outage", 200.0, description="3-minute SMTP outage"),
            Scenario(
                "soak",
                "constant",
                200.0,
                _soak_s(),
                rss_every_s=10.0,
                description=f"memory soak ({SOAK_ENV} s)",
            ),
            Scenario("tracing-cost", "tracing", 200.0, 20.0, notifiers=0, warmup_s=3.0),
            Scenario("profile-api", "profile", 1_000.0, 30.0, notifiers=0, warmup_s=3.0),
        )
    }


SCENARIOS: Final = _scenarios()

# The ramps of the `max` scenario (orders/s per step).
INTAKE_STEPS: Final = (200.0, 400.0, 600.0, 800.0, 1000.0, 1200.0, 1500.0, 1800.0, 2000.0)
E2E_STEPS: Final = (100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 800.0, 1000.0, 1200.0)
# outage-recovery: normal traffic before, the outage, traffic after (then the drain wait).
OUTAGE_BEFORE_S: Final = 30.0
OUTAGE_S: Final = 180.0
#: Traffic goes on for this many times the outage after it (at least 60 s): 270 s for 180 s.
OUTAGE_AFTER_FACTOR: Final = 1.5
# tracing-cost: CPU per order at this rate, then the throughput when offered this much.
#: The arms: each one's environment on top of the stack's.
TRACING_ARMS: Final = {
    "on": {"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_SAMPLER": "parentbased_always_on"},
    "sampled": {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    },
    "off": {"OTEL_SDK_DISABLED": "true"},
}
TRACING_SATURATION_PER_S: Final = 1_500.0
TRACING_SATURATION_S: Final = 10.0


@dataclass
class RunOptions:
    out_dir: Path = RESULTS_DIR
    notifiers: int | None = None
    plot: bool = True
    quiet_timeout_s: float = 600.0
    step_s: float = 15.0
    outage_s: float = OUTAGE_S
    outage_mode: str = "refuse"
    profile_s: float = 20.0
    native: bool = False
    connections: int = DEFAULT_CONNECTIONS
    keep_data: bool = False
    #: Filled per run: the result of the quiet check, the command line.
    command: str = ""
    quiet: dict[str, Any] = field(default_factory=dict)


# --- is the machine quiet? ----------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def _parent(pid: int) -> int:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(raw[raw.rindex(")") + 2 :].split()[1])


def _ours() -> set[int]:
    """This process, its ancestors (a pytest running the smoke test) and their children."""
    mine, pid = set(), os.getpid()
    for _ in range(64):
        if pid <= 1 or pid in mine:
            break
        mine.add(pid)
        pid = _parent(pid)
    return mine


def busy_processes() -> list[str]:
    """Other `pytest` / `acme_cli.main` processes on the machine (pid and command line)."""
    mine = _ours()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in mine:
            continue
        command = _cmdline(int(entry))
        if any(marker in command for marker in _BUSY_MARKERS) and _parent(int(entry)) not in mine:
            found.append(f"{entry} {command[:120]}")
    return found


def _load1() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return math.nan


def wait_until_quiet(timeout_s: float, poll_s: float = _QUIET_POLL_S) -> dict[str, Any]:
    """Wait (at most `timeout_s`) until the 1-minute load is < 1.0 and no other test suite or
    acme process runs. The verdict says whether the figures are provisional."""
    start = time.monotonic()
    checks = max(1, math.ceil(timeout_s / poll_s) + 1) if timeout_s > 0 else 1
    load, busy = _load1(), busy_processes()
    for check in range(checks):
        load, busy = _load1(), busy_processes()
        if load < _QUIET_LOAD and not busy:
            break
        if check + 1 < checks:
            print(
                f"machine busy (load {load:.2f}, {len(busy)} other test/acme processes); "
                f"waiting {poll_s:g} s ...",
                flush=True,
            )
            time.sleep(poll_s)
    quiet = load < _QUIET_LOAD and not busy
    return {
        "quiet": quiet,
        "waited_s": round(time.monotonic() - start, 1),
        "load1": load,
        "other_processes": busy[:10],
        "label": "" if quiet else f"provisional, machine busy (load {load:.2f})",
    }


# --- the system ---------------------------------------------------------------------------


def _start(
    root: Path,
    notifiers: int,
    *,
    sink: bool,
    outage_mode: str = "refuse",
    env: dict[str, str] | None = None,
) -> Stack:
    root.mkdir(parents=True, exist_ok=True)
    stack = Stack(root)
    stack.start_servers()
    if sink:
        stack.start_recorder_sink(root / "received.csv", extra_args=["--outage-mode", outage_mode])
    stack.start_api(env)
    stack.start_relay(env)
    if notifiers:
        stack.start_notifiers(notifiers, env)
    return stack


async def _ready(stack: Stack, sink: bool) -> float:
    if sink:
        return await wait_ready(stack, stack.root / "received.csv")
    return await stack.wait_api_ready(_READY_TIMEOUT_S)


def _notifiers_alive(stack: Stack) -> int:
    return sum(
        1 for c in stack.children if c.name.startswith("notifier-") and c.process.poll() is None
    )


def _child(stack: Stack, name: str) -> Child:
    return next(c for c in stack.children if c.name == name)


@dataclass
class Monitor:
    """Samples CPU, RSS, the stream and the mail once a second, until stopped."""

    stack: Stack
    roots: dict[str, int]
    mail: MailLog | None
    redis: Redis
    rss_every_s: float = 1.0
    samples: list[dict[str, Any]] = field(default_factory=list)

    async def run(self, stop: asyncio.Event) -> None:
        next_at = time.monotonic()
        next_rss = next_at
        # Bounded by MAX_RUN_S: one tick per second.
        for _ in range(int(MAX_RUN_S / _TICK_S)):
            if stop.is_set():
                return
            await self.tick(with_rss=time.monotonic() >= next_rss)
            if time.monotonic() >= next_rss:
                next_rss += self.rss_every_s
            next_at += _TICK_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))

    async def tick(self, *, with_rss: bool) -> None:
        # /proc is read in a thread: the scan of every process takes a few ms, which would
        # otherwise delay the generator's requests on this event loop.
        snapshot = await asyncio.to_thread(self.stack.snapshot, self.roots)
        sample: dict[str, Any] = {
            "t_unix": time.time(),
            "cpu_s": {k: round(v, 3) for k, v in snapshot.by_name.items()},
            "machine_busy_s": round(snapshot.machine_busy_s, 3),
            "replicas": _notifiers_alive(self.stack),
        }
        if with_rss:
            sample["rss_mb"] = {
                name: round(value, 1)
                for name, pid in self.roots.items()
                if (value := rss_mb(pid)) is not None
            }
        try:
            async with asyncio.timeout(2.0):
                state = await measure_stream(self.redis)
            sample.update(
                lag=state["lag"],
                pending=state["pending"],
                oldest_unread_age_s=round(state["oldest_unread_age_s"], 3),
                oldest_pending_age_s=round(state["oldest_pending_age_s"], 3),
                dead=state["dead"],
                stream_length=state["length"],
            )
        except (RedisError, OSError, TimeoutError) as exc:
            sample["stream_error"] = repr(exc)
        if self.mail is not None:
            self.mail.poll()
            sample["emails_total"] = self.mail.lines
        self.samples.append(sample)


@dataclass
class Run:
    """One started system with its monitor; `close()` stops both."""

    stack: Stack
    mail: MailLog | None
    redis: Redis
    monitor: Monitor
    stop: asyncio.Event
    task: asyncio.Task[None]
    t0_unix: float
    ready_s: float

    @classmethod
    async def open(cls, stack: Stack, *, sink: bool, rss_every_s: float) -> Run:
        ready_s = await _ready(stack, sink)
        mail = MailLog(stack.root / "received.csv") if sink else None
        redis = Redis.from_url(stack.redis_url, socket_timeout=5)
        monitor = Monitor(stack, stack.roots(), mail, redis, rss_every_s)
        stop = asyncio.Event()
        t0_unix = time.time()
        task = asyncio.create_task(monitor.run(stop))
        return cls(stack, mail, redis, monitor, stop, task, t0_unix, ready_s)

    def snapshot(self) -> CpuSnapshot:
        return self.stack.snapshot(self.monitor.roots)

    async def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(Exception):
            await self.task
        await self.redis.aclose()


# --- load ---------------------------------------------------------------------------------


async def offer(
    port: int,
    rate_per_s: float,
    duration_s: float,
    prefix: str,
    seed: int,
    *,
    connections: int,
    drain_timeout_s: float = 30.0,
) -> list[LoadResult]:
    """`rate_per_s` for `duration_s`, as back-to-back run_load chunks of at most _CHUNK_S."""
    results: list[LoadResult] = []
    remaining = duration_s
    for chunk in range(_MAX_CHUNKS):
        if remaining <= 1e-6:
            break
        length = min(remaining, _CHUNK_S)
        results.append(
            await run_load(
                HOST,
                port,
                rate_per_s,
                length,
                connections,
                drain_timeout_s=drain_timeout_s,
                key_prefix=f"{prefix}-{chunk}",
                seed=seed + chunk,
            )
        )
        remaining -= length
    return results


@dataclass(frozen=True, slots=True)
class Order:
    due_unix: float
    latency_s: float
    status: int
    order_id: str | None
    created_unix: float | None


def orders_of(loads: Iterable[LoadResult]) -> list[Order]:
    rows = []
    for load in loads:
        for r in load.records:
            created = iso_ms(r.created_at) / 1000 if r.created_at else None
            rows.append(
                Order(
                    load.started_unix_s + r.scheduled_s, r.latency_s, r.status, r.order_id, created
                )
            )
    return rows


def _pcts(values: Iterable[float]) -> dict[str, float]:
    ordered = sorted(values)
    out = {label: round(nearest_rank(ordered, f), 2) for label, f in _PERCENTILES}
    out["max"] = round(ordered[-1], 2) if ordered else math.nan
    out["count"] = len(ordered)
    return out


def post_figures(orders: list[Order], loads: list[LoadResult]) -> dict[str, Any]:
    ok = [o for o in orders if 200 <= o.status < 300]
    answered = [o.latency_s * 1000 for o in orders if o.status != 0]
    first = min((o.due_unix for o in orders), default=0.0)
    last_done = max((o.due_unix + o.latency_s for o in orders), default=0.0)
    elapsed = max(1e-9, last_done - first)
    gen_cpu = sum(load.generator_cpu_s for load in loads)
    return {
        "offered": len(orders),
        "accepted": len(ok),
        "not_2xx": len(orders) - len(ok),
        "errors_no_response": sum(1 for o in orders if o.status == 0),
        "achieved_per_s": round(len(ok) / elapsed, 1),
        "latency_ms": _pcts(answered),
        "dispatch_lag_p99_ms": round(
            max((ld.dispatch_lag_ms()["p99"] for ld in loads), default=math.nan), 2
        ),
        "generator_cpu_ms_per_request": round(gen_cpu * 1000 / max(1, len(orders)), 3),
        "retries": sum(load.retries for load in loads),
    }


def e2e_figures(orders: list[Order], mail: MailLog) -> dict[str, Any]:
    ok = [o for o in orders if 200 <= o.status < 300 and o.order_id]
    e2e, from_due, received = [], [], []
    for o in ok:
        at = mail.first_at.get(o.order_id or "")
        if at is None or o.created_unix is None:
            continue
        received.append(at)
        e2e.append((at - o.created_unix) * 1000)
        from_due.append((at - o.due_unix) * 1000)
    received.sort()
    span = received[-1] - received[0] if len(received) > 1 else 0.0
    last_post = max((o.due_unix + o.latency_s for o in ok), default=math.nan)
    return {
        "orders_accepted": len(ok),
        "orders_with_email": len(received),
        "missing": len(ok) - len(received),
        "duplicates": sum(
            mail.copies.get(o.order_id or "", 1) - 1 for o in ok if o.order_id in mail.first_at
        ),
        "e2e_ms": _pcts(e2e),
        "e2e_from_scheduled_ms": _pcts(from_due),
        "emails_per_s_first_to_last": round((len(received) - 1) / span, 1) if span else 0.0,
        "last_email_after_last_post_s": (
            round(received[-1] - last_post, 3) if received else math.nan
        ),
    }


# --- time series --------------------------------------------------------------------------


def series(t0: float, orders: list[Order], mail: MailLog | None) -> dict[str, Any]:
    """Per second since t0: offered and accepted (by due time), POST p50/p99 (by due time),
    e-mails received and their e2e p50/p99/max (by arrival time)."""
    by_due: dict[int, list[Order]] = {}
    created = {o.order_id: o.created_unix for o in orders if o.order_id}
    for o in orders:
        by_due.setdefault(int(o.due_unix - t0), []).append(o)
    arrivals: dict[int, list[float]] = {}
    if mail is not None:
        for order_id, at in mail.first_at.items():
            made = created.get(order_id)
            bucket = arrivals.setdefault(int(at - t0), [])
            if made is not None:
                bucket.append((at - made) * 1000)
            else:
                bucket.append(math.nan)
    seconds = [s for s in (*by_due, *arrivals) if 0 <= s < _MAX_SERIES_ROWS]
    columns = [
        "t_s",
        "offered",
        "accepted",
        "not_2xx",
        "post_p50_ms",
        "post_p99_ms",
        "emails",
        "e2e_p50_ms",
        "e2e_p99_ms",
        "e2e_max_ms",
    ]
    rows = []
    for second in range(max(seconds, default=-1) + 1):
        due = by_due.get(second, [])
        lat = sorted(o.latency_s * 1000 for o in due if o.status != 0)
        got = arrivals.get(second, [])
        e2e = sorted(v for v in got if not math.isnan(v))
        rows.append(
            [
                second,
                len(due),
                sum(1 for o in due if 200 <= o.status < 300),
                sum(1 for o in due if not 200 <= o.status < 300),
                round(nearest_rank(lat, 0.5), 2),
                round(nearest_rank(lat, 0.99), 2),
                len(got),
                round(nearest_rank(e2e, 0.5), 1),
                round(nearest_rank(e2e, 0.99), 1),
                round(e2e[-1], 1) if e2e else math.nan,
            ]
        )
    return {"t0_unix": t0, "columns": columns, "rows": rows}


def sample_rows(t0: float, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The monitor's samples with time since t0 and CPU as cores used since the last sample."""
    out = []
    previous: dict[str, Any] | None = None
    for sample in samples:
        row = {k: v for k, v in sample.items() if k != "cpu_s"}
        row["t_s"] = round(sample["t_unix"] - t0, 2)
        if previous is not None:
            dt = max(1e-6, sample["t_unix"] - previous["t_unix"])
            row["cores"] = {
                name: round(max(0.0, used - previous["cpu_s"].get(name, used)) / dt, 3)
                for name, used in sample["cpu_s"].items()
            }
            row["machine_cores"] = round(
                (sample["machine_busy_s"] - previous["machine_busy_s"]) / dt, 3
            )
        out.append(row)
        previous = sample
    return out


def rss_figures(
    samples: list[dict[str, Any]], start_unix: float, end_unix: float
) -> dict[str, Any]:
    """Per process: max RSS and the growth slope (least squares, MiB per minute) over the
    samples between start and end, and over their second half alone."""
    points: dict[str, list[tuple[float, float]]] = {}
    for sample in samples:
        if start_unix <= sample["t_unix"] <= end_unix:
            for name, value in sample.get("rss_mb", {}).items():
                points.setdefault(name, []).append((sample["t_unix"], value))
    out: dict[str, Any] = {}
    for name, xy in points.items():
        half = [p for p in xy if p[0] >= (xy[0][0] + xy[-1][0]) / 2]
        out[name] = {
            "samples": len(xy),
            "first_mb": xy[0][1],
            "last_mb": xy[-1][1],
            "max_mb": max(v for _t, v in xy),
            "slope_mb_per_min": _slope_per_min(xy),
            "slope_second_half_mb_per_min": _slope_per_min(half),
        }
    return out


def _slope_per_min(xy: list[tuple[float, float]]) -> float:
    if len(xy) < 3:
        return math.nan
    mean_t = statistics.fmean(t for t, _ in xy)
    mean_v = statistics.fmean(v for _, v in xy)
    var = sum((t - mean_t) ** 2 for t, _ in xy)
    if var <= 0:
        return math.nan
    return round(60 * sum((t - mean_t) * (v - mean_v) for t, v in xy) / var, 3)


async def postgres_backends(database_url: str) -> dict[int, str]:
    """PostgreSQL's processes by pid: the client's application_name for a session (acme-orders
    is the API and the relay, acme-notifier the notifiers), else the backend type."""
    try:
        conn = await asyncpg.connect(database_url, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return {}
    try:
        rows = await conn.fetch("SELECT pid, application_name, backend_type FROM pg_stat_activity")
    except asyncpg.PostgresError:
        return {}
    finally:
        await conn.close()
    return {
        int(r["pid"]): (r["application_name"] or r["backend_type"] or "?")
        for r in rows
        if r["pid"] is not None
    }


async def postgres_tables(database_url: str) -> dict[str, Any]:
    """Row churn and vacuum state of the tables an order touches (pg_stat_user_tables)."""
    try:
        conn = await asyncpg.connect(database_url, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        return {"error": repr(exc)}
    try:
        rows = await conn.fetch(
            "SELECT schemaname || '.' || relname AS name, n_live_tup, n_dead_tup, n_tup_ins,"
            " n_tup_upd, n_tup_hot_upd, n_tup_del, seq_scan, seq_tup_read, idx_scan,"
            " autovacuum_count, pg_total_relation_size(relid) AS bytes"
            " FROM pg_stat_user_tables ORDER BY n_dead_tup DESC"
        )
    except asyncpg.PostgresError as exc:
        return {"error": repr(exc)}
    finally:
        await conn.close()
    return {r["name"]: {k: v for k, v in dict(r).items() if k != "name"} for r in rows}


def process_cpu_s(pids: Iterable[int]) -> dict[int, float]:
    """utime + stime of each live process (its own threads, not reaped children)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            raw = Path(f"/proc/{pid}/stat").read_text()
            fields = raw[raw.rindex(")") + 2 :].split()
            out[pid] = (int(fields[11]) + int(fields[12])) / ticks
    return out


def postgres_split(
    labels: dict[int, str],
    before: dict[int, float],
    after: dict[int, float],
    total_s: float,
    units: int,
) -> dict[str, dict[str, float]]:
    """PostgreSQL's CPU in a window by who it served, per order; the rest (background workers,
    sessions that ended in the window) as "other"."""
    by_label: dict[str, float] = {}
    for pid, label in labels.items():
        if pid in before and pid in after:
            by_label[label] = by_label.get(label, 0.0) + after[pid] - before[pid]
    by_label["other (background, ended sessions)"] = max(0.0, total_s - sum(by_label.values()))
    return {
        label: {"cpu_s": round(used, 2), "cpu_ms_per_order": round(used * 1000 / max(1, units), 3)}
        for label, used in sorted(by_label.items(), key=lambda kv: -kv[1])
    }


def user_system_split(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, dict[str, float]]:
    """Per process: CPU seconds in user space and in the kernel (system calls: sockets, files)
    between two readings, and the kernel's share."""
    out = {}
    for name, (user, system) in after.items():
        user -= before.get(name, (user, system))[0]
        system -= before.get(name, (user, system))[1]
        total = max(1e-9, user + system)
        out[name] = {
            "user_s": round(user, 2),
            "system_s": round(system, 2),
            "system_share": round(system / total, 3),
        }
    return out


def _peak_sample(samples: list[dict[str, Any]], key: str) -> float:
    return max((float(s.get(key, 0.0)) for s in samples), default=math.nan)


# --- machine and report -------------------------------------------------------------------


def machine() -> dict[str, Any]:
    memory_mb = math.nan
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_mb = round(int(line.split()[1]) / 1024)
    return {
        "nproc": nproc(),
        "memory_total_mb": memory_mb,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_before": loadavg(),
    }


def _base_report(scenario: Scenario, options: RunOptions, notifiers: int) -> dict[str, Any]:
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


def _target(what: str, figure: Any, met: bool | None, note: str = "") -> dict[str, Any]:
    return {"target": what, "figure": figure, "met": met, "note": note}


def _cpu_headline(cpu: dict[str, Any], unit: str = "order") -> dict[str, float]:
    out = {f"cpu_ms_per_{unit}_total": cpu[f"tracked_ms_per_{unit}"]}
    for name, row in cpu["by_process"].items():
        out[f"cpu_ms_per_{unit}_{name}"] = row[f"cpu_ms_per_{unit}"]
    return out


def _memory_targets(rss: dict[str, Any]) -> list[dict[str, Any]]:
    targets = []
    for name, info in sorted(rss.items()):
        for prefix, limit in _RSS_LIMITS_MB.items():
            if name.startswith(prefix):
                targets.append(
                    _target(
                        f"{name} RSS < {limit:g} MB",
                        f"max {info['max_mb']:.0f} MB",
                        info["max_mb"] < limit,
                    )
                )
    return targets


# --- scenario: constant rate --------------------------------------------------------------


async def _warm_up(run: Run, scenario: Scenario, options: RunOptions) -> list[LoadResult]:
    if scenario.warmup_s <= 0:
        return []
    loads = await offer(
        run.stack.http_port,
        scenario.rate_per_s,
        scenario.warmup_s,
        f"warmup-{os.getpid()}",
        1,
        connections=options.connections,
    )
    if run.mail is not None:
        wanted = {o.order_id for o in orders_of(loads) if o.order_id}
        await run.mail.wait_for(wanted, scenario.mail_drain_s, run.stack)
    return loads


async def gc_pauses_of(port: int) -> dict[str, dict[str, float]]:
    """The API's `acme_gc_pause_seconds` per generation: count, total seconds, and the bucket
    bound the slowest collection fell under (from its own /metrics, on loopback)."""

    def scrape() -> str:
        url = f"http://{HOST}:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    try:
        text = await asyncio.to_thread(scrape)
    except OSError:
        return {}
    pauses: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "acme_gc_pause_seconds":
            continue
        buckets: dict[str, list[tuple[float, float]]] = {}
        for sample in family.samples:
            generation = sample.labels.get("generation", "?")
            entry = pauses.setdefault(generation, {})
            if sample.name.endswith("_count"):
                entry["count"] = sample.value
            elif sample.name.endswith("_sum"):
                entry["total_s"] = round(sample.value, 4)
            elif sample.name.endswith("_bucket"):
                buckets.setdefault(generation, []).append(
                    (float(sample.labels["le"]), sample.value)
                )
        for generation, bounds in buckets.items():
            total = pauses[generation].get("count", 0.0)
            slowest = min((le for le, n in bounds if n >= total), default=math.inf)
            pauses[generation]["slowest_under_s"] = slowest
    return pauses


async def constant(
    stack: Stack, scenario: Scenario, options: RunOptions, notifiers: int
) -> dict[str, Any]:
    report = _base_report(scenario, options, notifiers)
    run = await Run.open(stack, sink=True, rss_every_s=scenario.rss_every_s)
    try:
        print(f"ready in {run.ready_s:.1f} s; warming up {scenario.warmup_s:g} s ...", flush=True)
        warm = await _warm_up(run, scenario, options)
        print(f"offering {scenario.rate_per_s:g}/s for {scenario.duration_s:g} s ...", flush=True)
        pg_labels = await postgres_backends(stack.database_url)
        pg_before = process_cpu_s(pg_labels)
        before = run.snapshot()
        split_before = user_system_s(run.monitor.roots)
        start_unix = time.time()
        loads = await offer(
            stack.http_port,
            scenario.rate_per_s,
            scenario.duration_s,
            f"measure-{os.getpid()}",
            2,
            connections=options.connections,
        )
        posted = run.snapshot()
        orders = orders_of(loads)
        wanted = {o.order_id for o in orders if o.order_id and 200 <= o.status < 300}
        assert run.mail is not None
        print(
            f"waiting up to {scenario.mail_drain_s:g} s for {len(wanted)} e-mails ...", flush=True
        )
        await run.mail.wait_for(wanted, scenario.mail_drain_s, stack)
        after = run.snapshot()
        split = user_system_split(split_before, user_system_s(run.monitor.roots))
        pg_after = process_cpu_s(pg_labels)
        end_unix = time.time()
        await asyncio.sleep(2.0)  # late duplicates; one more monitor sample
        run.mail.poll()
        report["redis"] = await redis_state(run.redis)
        report["api_gc"] = await gc_pauses_of(stack.http_port)
    finally:
        await run.close()
    report["database"] = await database_state(stack.database_url)
    report["postgres_tables"] = await postgres_tables(stack.database_url)
    post = post_figures(orders, loads)
    e2e = e2e_figures(orders, run.mail)
    cpu = cpu_table(before, after, post["accepted"])
    rss = rss_figures(run.monitor.samples, start_unix, end_unix)
    samples = run.monitor.samples
    report.update(
        window={"start_unix": start_unix, "end_unix": end_unix},
        post=post,
        e2e=e2e,
        cpu=cpu,
        cpu_during_posts=cpu_table(before, posted, post["accepted"]),
        user_system=split,
        postgres_by_client=postgres_split(
            pg_labels,
            pg_before,
            pg_after,
            cpu["by_process"].get("postgres", {}).get("cpu_s", 0.0),
            post["accepted"],
        ),
        rss=rss,
        stream={
            "peak_lag": _peak_sample(samples, "lag"),
            "peak_pending": _peak_sample(samples, "pending"),
            "peak_oldest_unread_age_s": _peak_sample(samples, "oldest_unread_age_s"),
        },
        series=series(run.t0_unix, orders_of(warm) + orders, run.mail),
        samples=sample_rows(run.t0_unix, samples),
    )
    report["headline"] = {
        "achieved_per_s": post["achieved_per_s"],
        "post_p50_ms": post["latency_ms"]["p50"],
        "post_p99_ms": post["latency_ms"]["p99"],
        "e2e_p50_ms": e2e["e2e_ms"]["p50"],
        "e2e_p99_ms": e2e["e2e_ms"]["p99"],
        "e2e_max_ms": e2e["e2e_ms"]["max"],
        "missing": e2e["missing"],
        "duplicates": e2e["duplicates"],
        "not_2xx": post["not_2xx"],
        **_cpu_headline(cpu),
        **{f"rss_max_mb_{name}": info["max_mb"] for name, info in rss.items()},
        **{f"rss_slope_mb_per_min_{name}": info["slope_mb_per_min"] for name, info in rss.items()},
    }
    report["targets"] = _constant_targets(scenario, post, e2e, rss)
    return report


def _constant_targets(
    scenario: Scenario, post: dict[str, Any], e2e: dict[str, Any], rss: dict[str, Any]
) -> list[dict[str, Any]]:
    delivered = e2e["missing"] == 0 and post["not_2xx"] == 0
    targets = [
        _target(
            "every order accepted and its e-mail delivered once",
            f"missing {e2e['missing']}, duplicates {e2e['duplicates']}, not 2xx {post['not_2xx']}",
            delivered and e2e["duplicates"] == 0,
        )
    ]
    p99, e50, e99 = post["latency_ms"]["p99"], e2e["e2e_ms"]["p50"], e2e["e2e_ms"]["p99"]
    if scenario.name == "peak-200":
        targets += [
            _target("POST p99 < 10 ms at 200/s, notifiers running", f"{p99:.1f} ms", p99 < 10),
            _target("e2e p50 < 50 ms at 200/s", f"{e50:.0f} ms", e50 < 50),
            _target("e2e p99 < 500 ms at 200/s", f"{e99:.0f} ms", e99 < 500),
        ]
    if scenario.name == "sustain-500":
        keeps_up = e2e["last_email_after_last_post_s"] < 10
        targets.append(
            _target(
                f"{scenario.rate_per_s:g}/s sustained for {scenario.duration_s:g} s, every e-mail",
                f"{post['achieved_per_s']:.0f}/s accepted, {e2e['emails_per_s_first_to_last']:.0f} "
                f"e-mails/s, last e-mail {e2e['last_email_after_last_post_s']:.1f} s after the "
                f"last POST",
                delivered and keeps_up,
            )
        )
    if scenario.name in ("soak", "peak-200", "sustain-500"):
        targets += _memory_targets(rss)
    if scenario.name == "soak":
        for name, info in sorted(rss.items()):
            if name.startswith(tuple(_RSS_LIMITS_MB)):
                slope = info["slope_second_half_mb_per_min"]
                targets.append(
                    _target(
                        f"{name}: no RSS growth over the soak",
                        f"{slope:+.2f} MB/min (second half)",
                        abs(slope) < 1.0 if not math.isnan(slope) else None,
                    )
                )
    return targets


# --- scenario: max (ramps) ----------------------------------------------------------------


@dataclass
class Step:
    """One stretch of constant load and what each process spent during it."""

    loads: list[LoadResult]
    before: CpuSnapshot
    after: CpuSnapshot
    user_system: dict[str, dict[str, float]]

    def cpu(self) -> dict[str, Any]:
        accepted = sum(len(load.ok_records) for load in self.loads)
        return cpu_table(self.before, self.after, accepted)


async def _step(run: Run, rate: float, step_s: float, index: int, options: RunOptions) -> Step:
    before = run.snapshot()
    split_before = user_system_s(run.monitor.roots)
    loads = await offer(
        run.stack.http_port,
        rate,
        step_s,
        f"step{index}-{os.getpid()}",
        10 + index,
        connections=options.connections,
        drain_timeout_s=20.0,
    )
    after = run.snapshot()
    split = user_system_split(split_before, user_system_s(run.monitor.roots))
    return Step(loads, before, after, split)


async def ramp(
    stack: Stack, steps: Sequence[float], options: RunOptions, *, e2e: bool
) -> dict[str, Any]:
    """Steps up the rate until a step breaks; one row per step."""
    run = await Run.open(stack, sink=e2e, rss_every_s=1.0)
    rows: list[dict[str, Any]] = []
    all_orders: list[Order] = []
    try:
        await offer(
            stack.http_port,
            steps[0],
            3.0,
            f"warmup-{os.getpid()}",
            1,
            connections=options.connections,
        )
        # The ramp, then at most one more step halfway between the last good and the first
        # broken rate (rounded to 50/s), to narrow the answer down.
        planned = list(steps)
        refined = False
        for index in range(len(steps) + 1):
            if index >= len(planned):
                break
            rate = planned[index]
            print(f"  step {index + 1}: {rate:g}/s for {options.step_s:g} s ...", flush=True)
            start_unix = time.time()
            step = await _step(run, rate, options.step_s, index, options)
            loads = step.loads
            orders = orders_of(loads)
            all_orders += orders
            post = post_figures(orders, loads)
            row: dict[str, Any] = {
                "rate_per_s": rate,
                "start_s": round(start_unix - run.t0_unix, 2),
                "achieved_per_s": post["achieved_per_s"],
                "post_p50_ms": post["latency_ms"]["p50"],
                "post_p99_ms": post["latency_ms"]["p99"],
                "not_2xx": post["not_2xx"],
                "generator_dispatch_lag_p99_ms": post["dispatch_lag_p99_ms"],
                "cpu": step.cpu(),
                "user_system": step.user_system,
            }
            reasons = []
            if post["latency_ms"]["p99"] > 50:
                reasons.append(f"POST p99 {post['latency_ms']['p99']:.0f} ms > 50 ms")
            if post["not_2xx"]:
                reasons.append(f"{post['not_2xx']} requests not 2xx")
            if e2e and run.mail is not None:
                reasons += await _email_step(run, orders, rate, row)
            row["ok"] = not reasons
            row["broke_because"] = reasons
            rows.append(row)
            print(
                f"    achieved {row['achieved_per_s']:.0f}/s, POST p99 "
                f"{row['post_p99_ms']:.1f} ms"
                + (f", e2e p99 {row['e2e_p99_ms']:.0f} ms" if e2e else "")
                + ("" if row["ok"] else f"; BROKE: {'; '.join(reasons)}"),
                flush=True,
            )
            await asyncio.sleep(2.0)
            if reasons:
                good = [r["rate_per_s"] for r in rows if r["ok"]]
                middle = round((good[-1] + rate) / 2 / 50) * 50 if good else 0.0
                if refined or not good or not good[-1] < middle < rate:
                    break
                # Let the broken step's queues empty before the refining step starts.
                await asyncio.sleep(5.0)
                planned[index + 1 :] = [middle]
                refined = True
            elif refined:
                break
        samples = run.monitor.samples
    finally:
        await run.close()
    good = [r for r in rows if r["ok"]]
    return {
        "steps": rows,
        "last_good_rate_per_s": max((r["rate_per_s"] for r in good), default=0.0),
        "max_achieved_per_s": max((r["achieved_per_s"] for r in rows), default=0.0),
        "series": series(run.t0_unix, all_orders, run.mail),
        "samples": sample_rows(run.t0_unix, samples),
    }


async def _email_step(run: Run, orders: list[Order], rate: float, row: dict[str, Any]) -> list[str]:
    """Did the step's e-mails keep up? Backlog at the step's end <= 1 s of traffic, and every
    e-mail of the step within 10 s of its end."""
    assert run.mail is not None
    run.mail.poll()
    wanted = {o.order_id for o in orders if o.order_id and 200 <= o.status < 300}
    backlog_at_end = len(wanted - run.mail.first_at.keys())
    waited = await run.mail.wait_for(wanted, 30.0, run.stack)
    e2e = e2e_figures(orders, run.mail)
    row.update(
        emails_backlog_at_step_end=backlog_at_end,
        emails_all_in_s=round(waited, 1),
        e2e_p50_ms=e2e["e2e_ms"]["p50"],
        e2e_p99_ms=e2e["e2e_ms"]["p99"],
        missing=e2e["missing"],
        emails_per_s=e2e["emails_per_s_first_to_last"],
    )
    reasons = []
    if backlog_at_end > rate * 1.0:
        reasons.append(f"{backlog_at_end} e-mails behind at the step's end (> 1 s of traffic)")
    if e2e["missing"] or waited > 10.0:
        reasons.append(f"the step's e-mails took {waited:.0f} s after its end")
    return reasons


def max_scenario(
    root: Path, scenario: Scenario, options: RunOptions, notifiers: int
) -> dict[str, Any]:
    report = _base_report(scenario, options, notifiers)
    phases: dict[str, Any] = {}
    for phase, steps, with_notifiers in (
        ("intake", INTAKE_STEPS, 0),
        ("e2e", E2E_STEPS, notifiers),
    ):
        print(f"max: phase {phase} ({with_notifiers} notifiers) ...", flush=True)
        phases[phase] = _stack_run(
            root / phase,
            with_notifiers,
            options,
            sink=phase == "e2e",
            env=None,
            body=lambda stack, steps=steps, e2e=phase == "e2e": ramp(  # type: ignore[misc]
                stack, steps, options, e2e=e2e
            ),
        )
    report["phases"] = phases
    intake, e2e = phases["intake"], phases["e2e"]
    good_intake = [s for s in intake["steps"] if s["ok"]]
    saturation_p99 = good_intake[-1]["post_p99_ms"] if good_intake else math.nan
    report["headline"] = {
        "intake_last_good_per_s": intake["last_good_rate_per_s"],
        "intake_max_achieved_per_s": intake["max_achieved_per_s"],
        "intake_p99_at_last_good_ms": saturation_p99,
        "e2e_last_good_per_s": e2e["last_good_rate_per_s"],
        "e2e_max_achieved_per_s": e2e["max_achieved_per_s"],
    }
    report["targets"] = [
        _target(
            "intake >= 1,500 orders/s from one API process (POST p99 <= 50 ms)",
            f"last good step {intake['last_good_rate_per_s']:g}/s; at most "
            f"{intake['max_achieved_per_s']:.0f}/s accepted when overloaded",
            intake["last_good_rate_per_s"] >= 1500,
        ),
        _target(
            "end to end >= 500 orders/s (15 s steps here; 5 minutes: sustain-500)",
            f"last good step {e2e['last_good_rate_per_s']:g}/s",
            e2e["last_good_rate_per_s"] >= 500,
        ),
    ]
    return report


# --- scenario: outage and recovery --------------------------------------------------------


async def _outage_window(
    run: Run, before_s: float, outage_s: float, marks: dict[str, float]
) -> None:
    sink = _child(run.stack, "sink")
    await asyncio.sleep(before_s)
    sink.process.send_signal(signal.SIGUSR1)
    marks["down_unix"] = time.time()
    print(f"  SMTP sink down for {outage_s:g} s ...", flush=True)
    await asyncio.sleep(outage_s)
    sink.process.send_signal(signal.SIGUSR2)
    marks["up_unix"] = time.time()
    print("  SMTP sink back", flush=True)


async def outage(
    stack: Stack, scenario: Scenario, options: RunOptions, notifiers: int
) -> dict[str, Any]:
    report = _base_report(scenario, options, notifiers)
    rate, outage_s = scenario.rate_per_s, options.outage_s
    load_s = OUTAGE_BEFORE_S + outage_s + max(60.0, OUTAGE_AFTER_FACTOR * outage_s)
    run = await Run.open(stack, sink=True, rss_every_s=scenario.rss_every_s)
    marks: dict[str, float] = {}
    try:
        warm = await _warm_up(run, scenario, options)
        before = run.snapshot()
        start_unix = time.time()
        print(f"offering {rate:g}/s for {load_s:g} s ...", flush=True)
        loads, _ = await asyncio.gather(
            offer(
                stack.http_port,
                rate,
                load_s,
                f"measure-{os.getpid()}",
                2,
                connections=options.connections,
            ),
            _outage_window(run, OUTAGE_BEFORE_S, outage_s, marks),
        )
        orders = orders_of(loads)
        assert run.mail is not None
        wanted = {o.order_id for o in orders if o.order_id and 200 <= o.status < 300}
        print(
            f"waiting up to {_SLA_S * 2:g} s for the rest of {len(wanted)} e-mails ...", flush=True
        )
        await run.mail.wait_for(wanted, _SLA_S * 2, stack)
        after = run.snapshot()
        end_unix = time.time()
        await asyncio.sleep(2.0)
        run.mail.poll()
        report["redis"] = await redis_state(run.redis)
    finally:
        await run.close()
    report["database"] = await database_state(stack.database_url)
    report["postgres_tables"] = await postgres_tables(stack.database_url)
    report["logs"] = child_logs(stack)
    post = post_figures(orders, loads)
    e2e = e2e_figures(orders, run.mail)
    recovery = _recovery(orders, run.mail, marks, rate)
    recovery["breaker"] = _breaker(report["logs"], report["redis"], report["database"])
    samples = run.monitor.samples
    recovery["peak_lag"] = _peak_sample(samples, "lag")
    recovery["peak_pending"] = _peak_sample(samples, "pending")
    recovery["peak_oldest_unread_age_s"] = _peak_sample(samples, "oldest_unread_age_s")
    report.update(
        window={"start_unix": start_unix, "end_unix": end_unix, **marks},
        post=post,
        e2e=e2e,
        recovery=recovery,
        cpu=cpu_table(before, after, post["accepted"]),
        rss=rss_figures(samples, start_unix, end_unix),
        series=series(run.t0_unix, orders_of(warm) + orders, run.mail),
        samples=sample_rows(run.t0_unix, samples),
    )
    oldest = recovery["oldest_email_e2e_s"]
    report["headline"] = {
        "oldest_email_e2e_s": oldest,
        "first_outage_order_e2e_s": recovery["first_outage_order_e2e_s"],
        "drain_s": recovery["drain_s"],
        "first_email_after_recovery_s": recovery["first_email_after_recovery_s"],
        "backlog_peak": recovery["backlog_peak"],
        "missing": e2e["missing"],
        "duplicates": e2e["duplicates"],
        "dead_letters": recovery["breaker"]["dead_letters"],
        "transient_failures": recovery["breaker"]["send_failed_transient"],
        "drain_emails_per_s": recovery["drain_emails_per_s"],
    }
    report["targets"] = [
        _target(
            f"after a {outage_s:g} s SMTP outage at {rate:g}/s the oldest e-mail is "
            f"accepted within {_SLA_S:g} s",
            f"{oldest:.0f} s",
            oldest < _SLA_S,
        ),
        _target(
            "the backlog drains, every e-mail delivered once",
            f"drained {recovery['drain_s']:.0f} s after SMTP came back; missing "
            f"{e2e['missing']}, duplicates {e2e['duplicates']}",
            e2e["missing"] == 0 and not math.isnan(recovery["drain_s"]),
        ),
        _target(
            "the circuit breaker holds during the outage (no e-mail dead-lettered, few attempts)",
            f"{recovery['breaker']['send_failed_transient']} failed attempts, "
            f"{recovery['breaker']['dead_letters']} dead letters",
            recovery["breaker"]["dead_letters"] == 0,
        ),
    ]
    return report


def _recovery(
    orders: list[Order], mail: MailLog, marks: dict[str, float], rate: float
) -> dict[str, Any]:
    down, up = marks.get("down_unix", math.nan), marks.get("up_unix", math.nan)
    ok = [o for o in orders if o.order_id and o.created_unix is not None]
    e2e = [
        (at - o.created_unix, o)
        for o in ok
        if o.created_unix is not None and (at := mail.first_at.get(o.order_id or "")) is not None
    ]
    oldest_s, oldest = max(e2e, key=lambda pair: pair[0], default=(math.nan, None))
    during = [o for o in ok if o.created_unix is not None and o.created_unix >= down]
    first_outage = min(during, key=lambda o: o.created_unix or 0.0, default=None)
    first_outage_e2e = (
        mail.first_at[first_outage.order_id] - (first_outage.created_unix or 0.0)
        if first_outage is not None and first_outage.order_id in mail.first_at
        else math.nan
    )
    # Backlog(s) = orders created by s - their e-mails received by s, second by second.
    created = sorted(o.created_unix for o in ok if o.created_unix is not None)
    received = sorted(mail.first_at[o.order_id] for o in ok if o.order_id in mail.first_at)
    backlog_peak, drain_s = 0, math.nan
    start = math.floor(created[0]) if created else 0
    end = math.ceil(max(received[-1] if received else 0.0, created[-1] if created else 0.0))
    i = j = 0
    for second in range(start, end + 2):
        while i < len(created) and created[i] <= second:
            i += 1
        while j < len(received) and received[j] <= second:
            j += 1
        backlog = i - j
        backlog_peak = max(backlog_peak, backlog)
        if second > up and math.isnan(drain_s) and backlog <= rate * 1.0:
            drain_s = second - up
    after_up = [at for at in received if at >= up]
    drained_at = up + drain_s if not math.isnan(drain_s) else math.nan
    in_drain = [at for at in after_up if at <= drained_at]
    return {
        "down_unix": down,
        "up_unix": up,
        "outage_s": round(up - down, 1),
        "oldest_email_e2e_s": round(oldest_s, 1),
        "oldest_email_order_created_after_down_s": (
            round((oldest.created_unix or 0.0) - down, 1) if oldest is not None else math.nan
        ),
        "first_outage_order_e2e_s": round(first_outage_e2e, 1),
        "first_email_after_recovery_s": round(after_up[0] - up, 2) if after_up else math.nan,
        "drain_s": drain_s,
        "drain_emails_per_s": round(len(in_drain) / drain_s, 1) if drain_s and in_drain else 0.0,
        "backlog_peak": backlog_peak,
    }


def _breaker(
    logs: dict[str, Any], redis_now: dict[str, Any], database: dict[str, Any]
) -> dict[str, Any]:
    def total(event: str) -> int:
        return sum(
            info["events"].get(event, 0)
            for name, info in logs.items()
            if name.startswith("notifier-")
        )

    return {
        "smtp_circuit_opened": total("smtp_circuit_opened"),
        "smtp_circuit_opened_by_peer": total("smtp_circuit_opened_by_peer"),
        "send_failed_transient": total("send_failed_transient"),
        "entry_handling_failed": total("entry_handling_failed"),
        "dead_letters": int(redis_now.get("dead_length", 0)),
        "ledger_sent_after_retry": database.get("ledger_sent_after_retry"),
    }


# --- scenario: tracing cost ---------------------------------------------------------------


async def intake_arm(stack: Stack, scenario: Scenario, options: RunOptions) -> dict[str, Any]:
    """One tracing-cost arm: CPU per order at the scenario's rate, then throughput when
    offered TRACING_SATURATION_PER_S."""
    run = await Run.open(stack, sink=False, rss_every_s=10.0)
    try:
        await _warm_up(run, scenario, options)
        fixed = await _step(run, scenario.rate_per_s, scenario.duration_s, 0, options)
        await asyncio.sleep(1.0)
        saturated = await _step(run, TRACING_SATURATION_PER_S, TRACING_SATURATION_S, 1, options)
    finally:
        await run.close()
    post = post_figures(orders_of(fixed.loads), fixed.loads)
    sat = post_figures(orders_of(saturated.loads), saturated.loads)
    cpu = fixed.cpu()
    sat_cpu = saturated.cpu()
    return {
        "post": post,
        "cpu": cpu,
        "user_system": fixed.user_system,
        "saturation": {"offered_per_s": TRACING_SATURATION_PER_S, **sat, "cpu": sat_cpu},
        "headline": {
            "api_cpu_ms_per_order": cpu["by_process"]["api"]["cpu_ms_per_order"],
            "total_cpu_ms_per_order": cpu["tracked_ms_per_order"],
            "post_p50_ms": post["latency_ms"]["p50"],
            "post_p99_ms": post["latency_ms"]["p99"],
            "saturation_per_s": sat["achieved_per_s"],
            "saturation_api_cpu_ms_per_order": sat_cpu["by_process"]["api"]["cpu_ms_per_order"],
        },
    }


def _stack_run(
    root: Path,
    notifiers: int,
    options: RunOptions,
    *,
    sink: bool,
    env: dict[str, str] | None,
    body: Callable[[Stack], Coroutine[Any, Any, dict[str, Any]]],
) -> dict[str, Any]:
    """Start a system, run `body` on it in a fresh event loop, stop it, keep its logs.

    Synchronous on purpose: the services must be spawned from the main thread (their
    PR_SET_PDEATHSIG is tied to the thread that forks them) and outside an event loop
    (Stack.start_servers runs the migrations with asyncio.run)."""
    stack = _start(root, notifiers, sink=sink, outage_mode=options.outage_mode, env=env)
    try:
        result = asyncio.run(body(stack))
    finally:
        _stop(stack, options)
    # After the stop: shutdown warnings and errors are in the logs too.
    result.setdefault("logs", child_logs(stack))
    return result


def tracing(root: Path, scenario: Scenario, options: RunOptions, rounds: int) -> dict[str, Any]:
    report = _base_report(scenario, options, 0)
    arms: dict[str, list[dict[str, Any]]] = {arm: [] for arm in TRACING_ARMS}
    quiet_checks = []
    names = list(TRACING_ARMS)
    for round_index in range(rounds):
        # Rotate which arm goes first, so a drift of the machine hits every arm alike.
        shift = round_index % len(names)
        for arm in names[shift:] + names[:shift]:
            options.quiet = wait_until_quiet(options.quiet_timeout_s)
            quiet_checks.append(options.quiet)
            print(f"tracing-cost: round {round_index + 1}, tracing {arm} ...", flush=True)
            result = _stack_run(
                root / f"{round_index}-{arm}",
                0,
                options,
                sink=False,
                env=TRACING_ARMS[arm],
                body=lambda stack: intake_arm(stack, scenario, options),
            )
            result["quiet"] = options.quiet
            arms[arm].append(result)
            h = result["headline"]
            print(
                f"  API {h['api_cpu_ms_per_order']:.3f} CPU-ms/order, POST p99 "
                f"{h['post_p99_ms']:.1f} ms; saturation {h['saturation_per_s']:.0f}/s",
                flush=True,
            )
    medians = {arm: _medians([r["headline"] for r in runs]) for arm, runs in arms.items()}
    off = medians["off"]

    def ratio(arm: str, key: str) -> float:
        base = off[key]["median"]
        return round(medians[arm][key]["median"] / base - 1, 4) if base else 0.0

    report["quiet_checks"] = quiet_checks
    report["provisional"] = next((q["label"] for q in quiet_checks if q["label"]), None)
    report["arms"] = arms
    report["medians"] = medians
    report["tracing_overhead"] = {
        arm: {
            "api_cpu_per_order": ratio(arm, "api_cpu_ms_per_order"),
            "total_cpu_per_order": ratio(arm, "total_cpu_ms_per_order"),
            "saturation_throughput": ratio(arm, "saturation_per_s"),
        }
        for arm in names
        if arm != "off"
    }
    report["headline"] = {
        f"{key}_{arm}": medians[arm][key]["median"] for arm in arms for key in medians[arm]
    }
    report["targets"] = []
    return report


# --- scenario: API profile ----------------------------------------------------------------


async def profile_api(stack: Stack, scenario: Scenario, options: RunOptions) -> dict[str, Any]:
    report = _base_report(scenario, options, 0)
    run = await Run.open(stack, sink=False, rss_every_s=10.0)
    folded = stack.root / "api.folded"
    try:
        await _warm_up(run, scenario, options)
        api_pid = _child(stack, "api").process.pid

        async def record() -> dict[str, Any]:
            await asyncio.sleep(3.0)
            profiler = start_profile(api_pid, options.profile_s, folded, native=options.native)
            if profiler is None:
                return {"error": "py-spy not installed"}
            await asyncio.to_thread(stop_profile, profiler, options.profile_s + 30)
            return hot_spots(folded)

        step, spots = await asyncio.gather(
            _step(run, scenario.rate_per_s, scenario.duration_s, 0, options), record()
        )
    finally:
        await run.close()
    post = post_figures(orders_of(step.loads), step.loads)
    report.update(post=post, cpu=step.cpu(), user_system=step.user_system, profile=spots)
    report["profile"]["raw_stacks"] = str(folded)
    if "error" not in spots:
        report["profile"]["markdown"] = markdown_table(spots)
    report["headline"] = {"achieved_per_s": post["achieved_per_s"]}
    report["targets"] = []
    return report


# --- running, summaries, plots ------------------------------------------------------------


def _stop(stack: Stack, options: RunOptions) -> None:
    with signals_ignored():
        stack.stop()
        if not options.keep_data:
            stack.remove_data()


def _medians(headlines: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
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


def run_scenario(name: str, options: RunOptions, rounds: int = 1) -> dict[str, Any]:
    """Run one scenario once (tracing-cost: `rounds` interleaved rounds) on a fresh system."""
    scenario = SCENARIOS[name]
    notifiers = scenario.notifiers if options.notifiers is None else options.notifiers
    if scenario.kind in ("tracing", "profile"):
        notifiers = 0
    root = Path(tempfile.mkdtemp(prefix=f"acme-bench-{name}-"))
    print(f"{name}: system in {root} (nproc {nproc()}) ...", flush=True)
    if scenario.kind == "tracing":
        report = tracing(root, scenario, options, rounds)
    elif scenario.kind == "max":
        report = max_scenario(root, scenario, options, notifiers)
    else:
        body: Callable[[Stack], Coroutine[Any, Any, dict[str, Any]]]
        if scenario.kind == "outage":
            body = lambda stack: outage(stack, scenario, options, notifiers)  # noqa: E731
        elif scenario.kind == "profile":
            body = lambda stack: profile_api(stack, scenario, options)  # noqa: E731
        else:
            body = lambda stack: constant(stack, scenario, options, notifiers)  # noqa: E731
        report = _stack_run(
            root, notifiers, options, sink=scenario.kind != "profile", env=None, body=body
        )
    report["machine"]["loadavg_after"] = loadavg()
    report["data_dir"] = str(root)
    return report


def save_report(report: dict[str, Any], out_dir: Path, plot: bool) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
    path = out_dir / f"{report['scenario']}-{stamp}.json"
    if plot and report.get("series"):
        picture = path.with_suffix(".png")
        if plot_report(report, picture):
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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Run one named benchmark scenario on a fresh system; write JSON and a plot.",
        epilog="; ".join(f"{s.name}: {s.description or s.kind}" for s in SCENARIOS.values()),
    )
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="results folder")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs (tracing-cost: interleaved rounds); a summary gives medians",
    )
    parser.add_argument("--notifiers", type=int, default=None, help="notifier replicas")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--quiet-timeout-s",
        type=float,
        default=600.0,
        help="longest wait for a quiet machine before each run (0: no wait)",
    )
    parser.add_argument("--step-s", type=float, default=15.0, help="max: seconds per step")
    parser.add_argument("--outage-s", type=float, default=OUTAGE_S)
    parser.add_argument("--outage-mode", choices=("refuse", "421"), default="refuse")
    parser.add_argument("--profile-s", type=float, default=20.0, help="profile-api: py-spy s")
    parser.add_argument("--native", action="store_true", help="profile-api: C frames too")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS)
    parser.add_argument("--keep-data", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not (
        1 <= args.repeat <= 20
        and 0 <= (args.notifiers or 0) <= 16
        and 5 <= args.step_s <= 120
        and 10 <= args.outage_s <= 600
        and 0 <= args.quiet_timeout_s <= 3_600
        and 5 <= args.profile_s <= 120
    ):
        print(
            "run: --repeat 1-20, --notifiers 0-16, --step-s 5-120, --outage-s 10-600, "
            "--quiet-timeout-s 0-3600, --profile-s 5-120",
            file=sys.stderr,
        )
        return 2
    install_uvloop()
    signal.signal(signal.SIGTERM, raise_interrupt)
    options = RunOptions(
        out_dir=args.out,
        notifiers=args.notifiers,
        plot=not args.no_plot,
        quiet_timeout_s=args.quiet_timeout_s,
        step_s=args.step_s,
        outage_s=args.outage_s,
        outage_mode=args.outage_mode,
        profile_s=args.profile_s,
        native=args.native,
        connections=args.connections,
        keep_data=args.keep_data,
        command=shlex.join(sys.orig_argv),
    )
    tracing_kind = SCENARIOS[args.scenario].kind == "tracing"
    runs = 1 if tracing_kind else args.repeat
    reports, paths = [], []
    try:
        for index in range(runs):
            if not tracing_kind:
                options.quiet = wait_until_quiet(options.quiet_timeout_s)
            if runs > 1:
                print(f"--- run {index + 1} of {runs}", flush=True)
            report = run_scenario(args.scenario, options, rounds=args.repeat)
            path = save_report(report, options.out_dir, options.plot)
            reports.append(report)
            paths.append(path)
            print(format_report(report))
            pictures = [report["plot"]] if "plot" in report else []
            pictures += report.get("plots", {}).values()
            print(f"result    {path}", *(f"plot      {p}" for p in pictures), sep="\n", flush=True)
    except KeyboardInterrupt:
        print("\nrun: interrupted; stopped the system", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - report the failure and the logs' tails
        print(f"run: failed: {exc!r}", file=sys.stderr)
        folders = Path(tempfile.gettempdir()).glob(f"acme-bench-{args.scenario}-*")
        newest = max(folders, key=lambda p: p.stat().st_mtime, default=None)
        for log in sorted(newest.rglob("logs/*.log")) if newest is not None else []:
            print(f"--- {log}\n{log_tail(log, 8)}", file=sys.stderr)
        return 1
    if runs > 1:
        summary = {
            "scenario": args.scenario,
            "command": options.command,
            "runs": [str(p) for p in paths],
            "provisional": [r.get("provisional") for r in reports],
            "medians": _medians([r["headline"] for r in reports]),
            "targets_met": [[t["met"] for t in r.get("targets", [])] for r in reports],
        }
        stamp = datetime.now().strftime("%Y%m%dT%H%M%S")
        path = options.out_dir / f"{args.scenario}-summary-{stamp}.json"
        path.write_text(json.dumps(summary, indent=1, default=str) + "\n")
        print(f"summary   {path}")
        for key, value in summary["medians"].items():
            print(
                f"  {key:<44} median {value['median']:<10g} (min {value['min']:g}, "
                f"max {value['max']:g}, {value['runs']} runs)"
            )
    failed = any(
        t["met"] is False and "delivered" in t["target"]
        for r in reports
        for t in r.get("targets", [])
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
