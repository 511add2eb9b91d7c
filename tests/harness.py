"""Running real replicas and services inside a test's event loop, and waiting on outcomes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from acme_notify.delivery import Delivery
from acme_notify.flow import CircuitBreaker
from acme_notify.ledger import LEDGER_TABLE, SendLedger
from acme_notify.processor import Processor
from acme_notify.render import Renderer
from acme_notify.settings import NotifySettings
from acme_notify.smtp import SmtpConfig, SmtpPool
from acme_notify.streams import RawEntry, Streams
from acme_notify.telemetry import NotifyMetrics
from acme_notify.worker import Replica, build_replica, open_clients
from acme_orders.api_keys import SCOPES, issue_key
from acme_orders.app import api_app, relay_actors
from acme_orders.app import open_clients as open_order_clients
from acme_orders.settings import OrdersSettings
from acme_orders.store import TIMELINE_TABLE
from acme_orders.telemetry import OrdersMetrics
from acme_runtime.actors import Supervisor
from acme_runtime.partitions import maintain


def notify_env(
    database_url: str, redis_url: str, smtp_url: str, **overrides: str
) -> dict[str, str]:
    """Notifier environment with a fast retry schedule, so retries happen within a test."""
    return {
        "ACME_DATABASE_URL": database_url,
        "ACME_REDIS_URL": redis_url,
        "ACME_SMTP_URL": smtp_url,
        "ACME_CONSUMER_NAME": "notifier-test-1",
        "ACME_NOTIFY_BLOCK_MS": "50",
        "ACME_CLAIM_INTERVAL_MS": "50",
        "ACME_HEARTBEAT_INTERVAL_MS": "50",
        "ACME_REAPER_INTERVAL_MS": "50",
        "ACME_BACKOFF_BASE_MS": "200",
        "ACME_BACKOFF_MAX_MS": "800",
        "ACME_MAX_DELIVERIES": "4",
        "ACME_SMTP_TIMEOUT_S": "2",
        "ACME_BREAKER_COOLDOWN_S": "0.3",
        "ACME_BREAKER_MAX_COOLDOWN_S": "1",
        "ACME_NOTIFY_GRACE_S": "5",
        # Tests mail one address many times; tests/integration/test_abuse.py sets a cap.
        "ACME_RECIPIENT_MAX_PER_HOUR": "0",
        **overrides,
    }


def notify_settings(
    database_url: str, redis_url: str, smtp_url: str, **overrides: str
) -> NotifySettings:
    return NotifySettings.from_env(notify_env(database_url, redis_url, smtp_url, **overrides))


@asynccontextmanager
async def running_replica(settings: NotifySettings) -> AsyncIterator[Replica]:
    """A notifier replica running its actors until the block exits (then drained)."""
    async with open_clients(settings) as (redis, pool):
        replica = build_replica(settings, redis, pool)
        supervisor = Supervisor(replica.actors, grace_s=settings.grace_s)
        runner = asyncio.create_task(supervisor.run())
        try:
            yield replica
        finally:
            supervisor.stop.set()
            await runner
            await replica.delivery.pool.close()


def start_notifier_process(settings_env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`acme notifier` as a real OS process, for tests that kill it with SIGKILL."""
    env = {**os.environ, **settings_env, "ACME_LOG_FORMAT": "json"}
    return subprocess.Popen(
        [sys.executable, "-m", "acme_cli.main", "notifier"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@asynccontextmanager
async def running_order_workers(settings: OrdersSettings) -> AsyncIterator[None]:
    """The order service's background actors (relay, re-drive, receipts, janitor)."""
    async with open_order_clients(settings) as clients:
        supervisor = Supervisor(relay_actors(settings, clients), grace_s=5)
        runner = asyncio.create_task(supervisor.run())
        try:
            yield
        finally:
            supervisor.stop.set()
            await runner


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float = 10, what: str = "condition"
) -> None:
    """Polls `check` until it is true; fails the test after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)


@dataclass
class Rig:
    """One in-process notifier core: the processor, with a real SMTP pool and a real ledger,
    driven entry by entry instead of by actors."""

    processor: Processor
    streams: Streams
    ledger: SendLedger
    metrics: NotifyMetrics
    smtp: SmtpPool

    def bookkeeping_failures(self, stage: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "acme_notify_bookkeeping_failures_total", {"stage": stage}
        )
        return value or 0.0

    async def process(self, entry: RawEntry) -> None:
        self.processor.submit(entry)
        await self.processor.drain()


def build_rig(
    redis: Redis,
    pool: asyncpg.Pool,
    smtp_url: str,
    *,
    concurrency: int = 8,
    max_deliveries: int = 3,
    smtp_timeout_s: float = 2.0,
    patience_s: float = 5.0,
) -> Rig:
    """The replica `solo` as a `Rig` (close `rig.smtp` when done)."""
    streams = Streams(redis, "solo")
    smtp = SmtpPool(
        SmtpConfig.from_url(
            smtp_url, timeout_s=smtp_timeout_s, pool_size=2, helo_name="notifier.acme.test"
        )
    )
    metrics = NotifyMetrics()
    ledger = SendLedger(pool)
    processor = Processor(
        streams=streams,
        ledger=ledger,
        renderer=Renderer("AcME <pedidos@acme.example>", "acme.example"),
        send=Delivery(smtp, CircuitBreaker(5, 1.0), redis, consumer="solo").send,
        concurrency=concurrency,
        max_deliveries=max_deliveries,
        record_patience_s=patience_s,
        metrics=metrics,
    )
    return Rig(processor, streams, ledger, metrics, smtp)


async def api_key(database_url: str, *scopes: str, name: str = "tests") -> str:
    """A new API key in this database (both scopes unless some are named), as a caller sends it."""
    return await issue_key(database_url, name=name, scopes=scopes or SCOPES, operator="tests")


@asynccontextmanager
async def api_client(
    settings: OrdersSettings, metrics: OrdersMetrics | None = None
) -> AsyncIterator[AsyncTestClient[Any]]:
    """The API app in this test's event loop, with a key of both scopes on every request."""
    key = await api_key(settings.database_url)
    async with AsyncTestClient(app=api_app(settings, metrics)) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield client


async def partitions_ahead(database_url: str) -> None:
    """What every process does before it writes: the partitions of today and ahead exist (a
    database just migrated has its floor partition only, which ends when it was migrated)."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        for table in (TIMELINE_TABLE, LEDGER_TABLE):
            await maintain(pool, table, interval_s=86_400, retention_s=30 * 86_400, wait=True)
    finally:
        await pool.close()
