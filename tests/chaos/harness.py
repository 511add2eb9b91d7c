"""The chaos harness: the real system as OS processes, with faults injected on a schedule.

`ChaosSystem` starts what `acme up` starts, each as its own process through the `acme` CLI
(reusing bench/stack.py's `Stack`): a durable embedded PostgreSQL, an embedded Redis (AOF on,
or off to lose data on restart), `acme api`, `acme relay`, two or more `acme notifier`
replicas, and tests/chaos/faulty_smtp.py as the SMTP relay, all on 127.0.0.1 with short
timings (`CHAOS_ENV`). It can kill -9, SIGTERM and restart any of them, crash PostgreSQL or
Redis, and steer the SMTP server's faults; every fault goes into `timeline`, which the verdict
uses to explain (or not) each duplicate e-mail. Load comes from bench/loadgen.py's `run_load`
(or tests/chaos/client.py when the API itself goes away).

The size is `ACME_CHAOS_SCALE`: "ci" (default: ~50 orders/s for ~12 s a scenario, the whole
suite in a few minutes on 2 cores) or "full" (200 orders/s for 60 s, 60 s SMTP outage).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import asyncpg
import msgspec
import psutil
from bench.loadgen import LoadResult, http_get_status, run_load
from bench.stack import HOST, Child, MailLog, Stack, acme_argv, log_tail
from redis.exceptions import RedisError, ResponseError

from acme_cli.embedded import EmbeddedRedis, free_port
from acme_runtime.channels import RECEIPTS_GROUP, shards
from acme_runtime.redis_client import open_redis
from tests.chaos.faulty_smtp import FaultPlan, ack_path
from tests.postfix import PostfixServer

__all__ = [
    "CHAOS_ENV",
    "ChaosSystem",
    "FaultControl",
    "FaultEvent",
    "MailLogs",
    "Scale",
    "chaos_scale",
    "until",
]

FAULTY_SMTP: Final = Path(__file__).resolve().parent / "faulty_smtp.py"
#: The notifiers' EHLO name when a strict relay (Postfix) stands in front of the SMTP server.
NOTIFIER_HELO: Final = "notifier.acme.test"
_POLL_S: Final = 0.05
_READY_TIMEOUT_S: Final = 60.0
_EXIT_TIMEOUT_S: Final = 30.0

#: Short timings (production defaults are seconds to minutes) so scenarios finish fast.
CHAOS_ENV: Final = {
    "ACME_BACKOFF_BASE_MS": "500",
    "ACME_BACKOFF_MAX_MS": "4000",
    "ACME_CLAIM_INTERVAL_MS": "200",
    "ACME_REAPER_INTERVAL_MS": "200",
    "ACME_HEARTBEAT_INTERVAL_MS": "300",
    "ACME_REDRIVE_AFTER_S": "5",
    "ACME_RELAY_GRACE_MS": "500",
    "ACME_RELAY_POLL_MS": "200",
    "ACME_SMTP_TIMEOUT_S": "2",
    "ACME_BREAKER_COOLDOWN_S": "1",
    "ACME_BREAKER_MAX_COOLDOWN_S": "4",
    "ACME_NOTIFY_GRACE_S": "10",
    "ACME_FAST_PATH_PAUSE_MS": "500",
    # One key carries the whole load: the scenarios break the system, not the per-key limit.
    "ACME_API_RATE_PER_S": "0",
    "ACME_PROBE_INTERVAL_S": "1",
    "ACME_OUTBOX_PROBE_INTERVAL_S": "1",
    "ACME_JANITOR_INTERVAL_S": "60",
}


@dataclass(frozen=True)
class Scale:
    name: str
    rate_per_s: float
    duration_s: float
    #: Length of the SMTP outage scenario.
    outage_s: float
    #: Bound on waiting for every e-mail once the load is over.
    mail_timeout_s: float
    #: Bound on waiting for the order service to learn every outcome (receipts, outbox).
    confirm_timeout_s: float


SCALES: Final = {
    "ci": Scale("ci", 50.0, 12.0, 15.0, 60.0, 20.0),
    "full": Scale("full", 200.0, 60.0, 60.0, 300.0, 60.0),
}


def chaos_scale() -> Scale:
    name = os.environ.get("ACME_CHAOS_SCALE", "ci")
    if name not in SCALES:
        raise ValueError(f"ACME_CHAOS_SCALE must be one of {', '.join(SCALES)}, got {name!r}")
    return SCALES[name]


@dataclass(frozen=True)
class FaultEvent:
    #: Unix time (same clock as the SMTP server's received_at and the API's created_at).
    at: float
    kind: str
    target: str
    detail: str = ""


async def until(check: Callable[[], bool], timeout_s: float, what: str) -> float:
    """Polls `check` every 50 ms; seconds waited, or AssertionError after `timeout_s`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(_POLL_S)
    return time.monotonic() - start


class FaultControl:
    """The test's side of faulty_smtp.py: write a plan, wait until the server applied it."""

    def __init__(self, control: Path, faults: Path) -> None:
        self.control = control
        self.faults = faults
        self._generation = 0

    async def set(self, **fields: Any) -> None:
        """Replaces the whole plan (unspecified faults are off) and waits for the ack."""
        self._generation += 1
        plan = FaultPlan(generation=self._generation, **fields)
        temp = self.control.with_name(self.control.name + ".tmp")
        temp.write_bytes(msgspec.json.encode(plan))
        os.replace(temp, self.control)
        wanted = self._generation

        def applied() -> bool:
            try:
                return int(json.loads(ack_path(self.control).read_text())["generation"]) >= wanted
            except (OSError, ValueError, KeyError):
                return False

        await until(applied, 10.0, f"the SMTP server to apply plan {wanted}")

    def injected(self) -> list[dict[str, Any]]:
        """Every fault the server injected so far, one dict per event."""
        try:
            lines = self.faults.read_text().splitlines()
        except OSError:
            return []
        return [json.loads(line) for line in lines if line.strip()]


class MailLogs:
    """Several SMTP servers' records read as one: copies add up, the first and last arrival of
    an order are the earliest and latest on any server."""

    def __init__(self, logs: list[MailLog]) -> None:
        self.logs = logs
        self.copies: dict[str, int] = {}
        self.first_at: dict[str, float] = {}
        self.last_at: dict[str, float] = {}

    def poll(self) -> int:
        new = sum(log.poll() for log in self.logs)
        if len(self.logs) == 1:
            [log] = self.logs
            self.copies, self.first_at, self.last_at = log.copies, log.first_at, log.last_at
            return new
        copies: dict[str, int] = {}
        first: dict[str, float] = {}
        last: dict[str, float] = {}
        for log in self.logs:
            for order_id, n in log.copies.items():
                copies[order_id] = copies.get(order_id, 0) + n
            for order_id, at in log.first_at.items():
                first[order_id] = min(at, first.get(order_id, at))
            for order_id, at in log.last_at.items():
                last[order_id] = max(at, last.get(order_id, at))
        self.copies, self.first_at, self.last_at = copies, first, last
        return new


@dataclass
class ChaosSystem:
    root: Path
    notifiers: int = 2
    redis_appendonly: bool = True
    #: Put a real, strict Postfix (STARTTLS required, FQDN HELO, relay policy) between the
    #: notifiers and the recording SMTP server, as production relays through one.
    mta: bool = False
    #: Start a second recording SMTP server as the notifiers' fallback provider
    #: (ACME_SMTP_FALLBACK_URL), steered with `set_fallback_smtp`.
    fallback: bool = False
    #: ACME_STREAM_SHARDS of every process.
    shards: int = 1
    #: A Redis or Redis Cluster the test runs (`redis+cluster://…`); default: an embedded one.
    redis_url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    stack: Stack = field(init=False)
    smtp: FaultControl = field(init=False)
    #: Every e-mail either provider stored (what the verdict counts).
    mail: MailLogs = field(init=False)
    #: What the primary and the fallback stored, each on its own.
    primary_mail: MailLog = field(init=False)
    fallback_mail: MailLog = field(init=False)
    fallback_smtp: FaultControl = field(init=False)
    timeline: list[FaultEvent] = field(default_factory=list)
    api: Child | None = None
    relay: Child | None = None
    slots: dict[int, Child] = field(default_factory=dict)
    postfix: PostfixServer | None = None
    started_at: float = 0.0
    _incarnations: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.stack = Stack(self.root, external_redis_url=self.redis_url)
        if not self.redis_appendonly:
            self.stack.redis = EmbeddedRedis(self.root / "redis", appendonly=False)
        self.smtp = FaultControl(self.root / "smtp-control.json", self.root / "smtp-faults.jsonl")
        self.primary_mail = MailLog(self.root / "received.csv")
        self.fallback_smtp = FaultControl(
            self.root / "smtp-fallback-control.json", self.root / "smtp-fallback-faults.jsonl"
        )
        self.fallback_mail = MailLog(self.root / "received-fallback.csv")
        logs = [self.primary_mail, *([self.fallback_mail] if self.fallback else [])]
        self.mail = MailLogs(logs)
        self.env = {**CHAOS_ENV, "ACME_STREAM_SHARDS": str(self.shards), **self.env}

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.started_at = time.time()
        await asyncio.to_thread(self.stack.start_servers)
        port = free_port()
        self.stack.sink_port = port
        self.stack.smtp_url = f"smtp://{HOST}:{port}"
        received = self.primary_mail.path
        self._spawn_smtp("sink", port, self.smtp, received)
        if self.mta:
            await self._start_postfix(next_hop_port=port)
        if self.fallback:
            fallback_port = free_port()
            self._spawn_smtp("sink-fallback", fallback_port, self.fallback_smtp,
                             self.fallback_mail.path)  # fmt: skip
            self.env = {"ACME_SMTP_FALLBACK_URL": f"smtp://{HOST}:{fallback_port}", **self.env}
        self.stack.http_port = free_port()
        self.api = self._spawn("api", acme_argv("api"))
        self.relay = self._spawn("relay", acme_argv("relay"))
        for slot in range(1, self.notifiers + 1):
            self.start_notifier(slot)
        await until(received.exists, _READY_TIMEOUT_S, "the SMTP server")
        if self.fallback:
            await until(self.fallback_mail.path.exists, _READY_TIMEOUT_S, "the fallback server")
        await self.wait_api_ready()
        await self.wait_started(self.relay, "relay_started")
        for child in self.slots.values():
            await self.wait_started(child, "notifier_started")

    def _spawn_smtp(self, name: str, port: int, control: FaultControl, received: Path) -> None:
        self.stack.spawn(name, [sys.executable, str(FAULTY_SMTP), "--port", str(port),
                                "--control", str(control.control), "--received", str(received),
                                "--faults", str(control.faults)])  # fmt: skip

    def injected(self) -> list[dict[str, Any]]:
        """Every fault either SMTP server injected so far."""
        return self.smtp.injected() + (self.fallback_smtp.injected() if self.fallback else [])

    async def stop(self) -> None:
        await asyncio.to_thread(self.stack.stop)
        if self.postfix is not None:
            await asyncio.to_thread(self.postfix.stop)

    async def _start_postfix(self, next_hop_port: int) -> None:
        # The `postfix` user must reach its queue under our folder (mkdtemp makes it 0700).
        for folder in (self.root.parent, self.root):
            folder.chmod(0o755)
        (self.root / "postfix").mkdir(exist_ok=True)
        self.postfix = PostfixServer(self.root / "postfix", next_hop_port=next_hop_port)
        await asyncio.to_thread(self.postfix.start)
        # The notifiers relay through it: STARTTLS with its certificate verified, an FQDN.
        self.env = {
            "ACME_SMTP_URL": self.postfix.url,
            "SSL_CERT_FILE": str(self.postfix.ca_path),
            "ACME_SMTP_HELO_NAME": NOTIFIER_HELO,
            **self.env,
        }

    def _spawn(self, role: str, argv: list[str], extra: dict[str, str] | None = None) -> Child:
        incarnation = self._incarnations.get(role, 0) + 1
        self._incarnations[role] = incarnation
        name = role if incarnation == 1 else f"{role}.{incarnation}"
        return self.stack.spawn(name, argv, {**self.env, **(extra or {})})

    def start_notifier(self, slot: int) -> Child:
        role = f"notifier-{slot}"
        # A new consumer name per process, as a Deployment's pod names are.
        consumer = f"{role}.{self._incarnations.get(role, 0) + 1}"
        child = self._spawn(role, acme_argv("notifier"), {"ACME_CONSUMER_NAME": consumer})
        self.slots[slot] = child
        return child

    def _alive_or_raise(self, child: Child) -> None:
        if child.process.poll() is not None:
            raise AssertionError(
                f"{child.name} exited with {child.process.returncode}; last lines of "
                f"{child.log_path}:\n{log_tail(child.log_path)}"
            )

    async def wait_started(self, child: Child, text: str) -> float:
        needle = text.encode()

        def logged() -> bool:
            self._alive_or_raise(child)
            try:
                return needle in child.log_path.read_bytes()[: 1024 * 1024]
            except OSError:
                return False

        return await until(logged, _READY_TIMEOUT_S, f"{child.name} to log {text!r}")

    async def wait_api_ready(self, timeout_s: float = _READY_TIMEOUT_S) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.api is not None:
                self._alive_or_raise(self.api)
            # A generous probe timeout: a just-restarted API may be busy with retrying clients.
            status = await http_get_status(HOST, self.stack.http_port, "/health/ready", 5.0)
            if status == 200:
                return time.monotonic() - start
            await asyncio.sleep(0.1)
        raise AssertionError(f"/health/ready not 200 after {timeout_s:g} s")

    def record(self, kind: str, target: str, detail: str = "") -> None:
        self.timeline.append(FaultEvent(time.time(), kind, target, detail))

    # --- process faults --------------------------------------------------------------------

    async def _wait_exit(self, child: Child, timeout_s: float = _EXIT_TIMEOUT_S) -> int:
        await until(lambda: child.process.poll() is not None, timeout_s, f"{child.name} to exit")
        return int(child.process.returncode)

    async def kill(self, child: Child) -> None:
        """SIGKILL, like an OOM kill or a node loss: no drain, no goodbye."""
        child.process.send_signal(signal.SIGKILL)
        self.record("kill", child.name)
        await self._wait_exit(child)

    async def kill_notifier(self, slot: int, restart_after_s: float) -> None:
        await self.kill(self.slots[slot])
        await asyncio.sleep(restart_after_s)
        child = self.start_notifier(slot)
        self.record("start", child.name)

    async def sigterm_notifier(self, slot: int) -> tuple[int, float]:
        """SIGTERM (stop reading, drain in-flight sends); its exit code and how long it took."""
        child = self.slots[slot]
        started = time.monotonic()
        child.process.send_signal(signal.SIGTERM)
        self.record("sigterm", child.name)
        code = await self._wait_exit(child)
        self.record("exited", child.name, str(code))
        return code, time.monotonic() - started

    async def rolling_restart(self, env: dict[str, str]) -> None:
        """A rollout of new settings (`env`): the relay, each notifier, then the API, one at a
        time, each stopped with SIGTERM (drain) and started again with them, as a Deployment's
        rolling update does; clients retry through the API's restart."""
        self.env = {**self.env, **env}
        detail = json.dumps(env, sort_keys=True)
        assert self.relay is not None and self.api is not None
        self.relay.process.send_signal(signal.SIGTERM)
        await self._wait_exit(self.relay)
        self.relay = self._spawn("relay", acme_argv("relay"))
        self.record("rollout", self.relay.name, detail)
        await self.wait_started(self.relay, "relay_started")
        for slot in sorted(self.slots):
            await self.sigterm_notifier(slot)
            child = self.start_notifier(slot)
            self.record("rollout", child.name, detail)
            await self.wait_started(child, "notifier_started")
        self.api.process.send_signal(signal.SIGTERM)
        await self._wait_exit(self.api)
        self.api = self._spawn("api", acme_argv("api"))
        await self.wait_api_ready(timeout_s=2 * _READY_TIMEOUT_S)
        self.record("rollout", self.api.name, detail)

    async def kill_relay(self, restart_after_s: float) -> None:
        assert self.relay is not None
        await self.kill(self.relay)
        await asyncio.sleep(restart_after_s)
        self.relay = self._spawn("relay", acme_argv("relay"))
        self.record("start", self.relay.name)

    async def kill_api(self, restart_after_s: float) -> float:
        """kill -9 the API, restart it on the same port; seconds until it was ready again."""
        assert self.api is not None
        await self.kill(self.api)
        down = time.monotonic()
        await asyncio.sleep(restart_after_s)
        self.api = self._spawn("api", acme_argv("api"))
        await self.wait_api_ready(timeout_s=2 * _READY_TIMEOUT_S)
        self.record("ready", self.api.name)
        return time.monotonic() - down

    async def postgres_down(self) -> None:
        """SIGKILL PostgreSQL and its backends, like a crash."""
        await asyncio.to_thread(self.stack.postgres.kill)
        self.record("down", "postgres", "SIGKILL")

    async def postgres_up(self) -> None:
        """Start it again on the same port (crash recovery replays the WAL)."""
        await asyncio.to_thread(self.stack.postgres.start)
        self.record("up", "postgres")

    async def freeze_postgres(self, frozen_s: float) -> None:
        """SIGSTOP PostgreSQL and every backend for `frozen_s`, then SIGCONT: a server that
        hangs (a storage stall, a swapping host) rather than one that is gone."""
        root = self.stack.roots()["postgres"]
        pids = [root, *(child.pid for child in psutil.Process(root).children())]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        self.record("freeze", "postgres", f"SIGSTOP {len(pids)} processes")
        try:
            await asyncio.sleep(frozen_s)
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            self.record("thaw", "postgres")

    async def crash_postgres(self, down_s: float) -> None:
        await self.postgres_down()
        await asyncio.sleep(down_s)
        await self.postgres_up()

    async def crash_redis(self, down_s: float) -> None:
        """SIGKILL Redis; restart after `down_s` (from the AOF, or empty without one)."""
        await asyncio.to_thread(self.stack.redis.kill)
        self.record("down", "redis", "SIGKILL, appendonly " + str(self.redis_appendonly))
        await asyncio.sleep(down_s)
        await asyncio.to_thread(self.stack.redis.start)
        self.record("up", "redis")

    async def misconfigure_relay(self) -> None:
        """The relay (Postfix) refuses us from now on: `554 5.7.1 <addr>: Relay access denied`
        to every RCPT, in every session, as after a changed IP allowlist or lost credentials."""
        assert self.postfix is not None, "start the system with mta=True"
        await asyncio.to_thread(self.postfix.deny_relay)
        self.record("misconfigured", "relay", "554 5.7.1 Relay access denied")

    async def fix_relay(self) -> None:
        assert self.postfix is not None, "start the system with mta=True"
        await asyncio.to_thread(self.postfix.allow_relay)
        self.record("fixed", "relay")

    async def set_smtp(self, **faults: Any) -> None:
        await self.smtp.set(**faults)
        self.record("smtp", "smtp", json.dumps(faults, sort_keys=True))

    async def set_fallback_smtp(self, **faults: Any) -> None:
        assert self.fallback, "start the system with fallback=True"
        await self.fallback_smtp.set(**faults)
        self.record("smtp", "smtp-fallback", json.dumps(faults, sort_keys=True))

    # --- load and quiescence ---------------------------------------------------------------

    async def load(self, rate_per_s: float, duration_s: float, *, seed: int = 1) -> LoadResult:
        return await run_load(
            HOST,
            self.stack.http_port,
            rate_per_s,
            duration_s,
            connections=32,
            drain_timeout_s=30.0,
            key_prefix=f"chaos-{seed}-{os.getpid()}",
            seed=seed,
            api_key=self.stack.api_key,
        )

    async def db_fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.stack.database_url, timeout=5)
        try:
            return list(await conn.fetch(sql, *args, timeout=10))
        finally:
            await conn.close()

    async def quiesce(
        self,
        wanted: set[str],
        *,
        mail_timeout_s: float,
        confirm_timeout_s: float,
        settle_s: float = 2.0,
    ) -> dict[str, float]:
        """Waits (bounded) until every wanted order has an e-mail, then until the order
        service has learnt every outcome (no outbox row, no order pending or published), then
        `settle_s` more for late duplicates. Never raises on a timeout: the verdict reports."""
        start = time.monotonic()
        # Bounded by mail_timeout_s: one poll per 200 ms.
        while time.monotonic() - start < mail_timeout_s:
            self.mail.poll()
            if wanted <= self.mail.first_at.keys():
                break
            await asyncio.sleep(0.2)
        mail_s = time.monotonic() - start
        confirm_start = time.monotonic()
        while time.monotonic() - confirm_start < confirm_timeout_s:
            if await self._confirmed():
                break
            await asyncio.sleep(0.5)
        confirm_s = time.monotonic() - confirm_start
        await asyncio.sleep(settle_s)
        self.mail.poll()
        return {"mail_wait_s": round(mail_s, 2), "confirm_wait_s": round(confirm_s, 2)}

    async def _confirmed(self) -> bool:
        """Every outcome applied and every receipt acknowledged: a receipt applied by a replica
        killed before its XACK still owes the deletion of its event's publish-once key, which
        the replica that claims it (after `claim_idle_ms`) finishes."""
        try:
            rows = await self.db_fetch(
                "SELECT (SELECT count(*) FROM outbox) AS outbox,"
                " (SELECT count(*) FROM orders"
                "  WHERE notification_status IN ('pending', 'published')) AS open"
            )
            receipts = await pending_count(
                self.stack.redis_url, [s.receipts for s in shards(self.shards)], RECEIPTS_GROUP
            )
        except (OSError, asyncpg.PostgresError, TimeoutError, RedisError):
            return False
        return bool(rows[0]["outbox"] == 0 and rows[0]["open"] == 0 and receipts == 0)


async def pending_count(redis_url: str, streams: list[str], group: str) -> int:
    """Entries read by `group` and not yet acknowledged, over `streams`; a stream without the
    group counts 0 (after a data loss nothing is pending)."""
    redis = open_redis(redis_url, socket_timeout=10)
    total = 0
    try:
        for stream in streams:
            try:
                summary: Any = await redis.xpending(stream, group)
            except ResponseError:
                continue
            total += int(summary["pending"])
    finally:
        await redis.aclose()
    return total


async def run_with_faults(load: Awaitable[Any], nemesis: Awaitable[None]) -> Any:
    """Runs the load and the fault schedule together; returns the load's result."""
    result, _ = await asyncio.gather(load, nemesis)
    return result
