"""Composition roots of the order service's processes: `acme api` and `acme relay`.

Each builds its clients from the settings, hands them to the pieces that use them, and owns
their shutdown. Nothing here runs at import time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial

import asyncpg
import structlog
from litestar import Litestar
from redis.asyncio import Redis

from acme_orders.api import build_app
from acme_orders.api_keys import KeyStore
from acme_orders.auth import Authenticator
from acme_orders.backlog import OutboxProbe
from acme_orders.group_commit import DEFAULT_MAX_IN_FLIGHT, GroupCommit
from acme_orders.janitor import Janitor
from acme_orders.publisher import FastPathPublisher
from acme_orders.ratelimit import Policy, RateLimiter
from acme_orders.receipts import ReceiptsConsumer
from acme_orders.relay import OutboxRelay, Redriver
from acme_orders.service import OrderService
from acme_orders.settings import OrdersSettings
from acme_orders.store import TIMELINE_TABLE, OrderStore
from acme_orders.telemetry import OrdersMetrics
from acme_runtime.actors import Actor, Supervisor, install_signal_handlers
from acme_runtime.channels import Shard, shards
from acme_runtime.heap import freeze_startup_heap, timing_collections
from acme_runtime.metrics_http import WorkerHttp, dependencies_answer
from acme_runtime.partitions import maintain
from acme_runtime.pg import init_connection, reset_connection
from acme_runtime.redis_client import is_cluster, open_redis

__all__ = ["Clients", "api_app", "open_clients", "relay_actors", "run_relay"]

log = structlog.get_logger(__name__)


@dataclass
class Clients:
    pool: asyncpg.Pool
    redis: Redis
    store: OrderStore


@asynccontextmanager
async def open_clients(settings: OrdersSettings) -> AsyncIterator[Clients]:
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        command_timeout=settings.db_timeout_ms / 1000,
        timeout=settings.db_timeout_ms / 1000,  # connecting, too, must not hang a request
        init=init_connection,
        reset=reset_connection,
        server_settings={
            "application_name": "acme-orders",
            "statement_timeout": str(settings.db_timeout_ms),
        },
    )
    redis = open_redis(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_ms / 1000,
        socket_connect_timeout=settings.redis_timeout_ms / 1000,
        health_check_interval=30,
    )
    try:
        yield Clients(pool, redis, OrderStore(pool))
    finally:
        await redis.aclose()
        await pool.close()


async def _schema_ready(store: OrderStore) -> None:
    # Not ready before the migration Job: orders would fail on a missing table or column.
    async with asyncio.timeout(1.0):
        current = await store.schema_is_current()
    if not current:
        raise RuntimeError("schema migrations not applied yet (run `acme migrate`)")


async def _timeline_partitions_ready(
    settings: OrdersSettings, pool: asyncpg.Pool, metrics: OrdersMetrics
) -> None:
    """Before a process writes timeline rows: the partitions they go to exist (waiting for
    another replica's round rather than skipping it); the janitor keeps them ahead after."""
    await maintain(
        pool,
        TIMELINE_TABLE,
        interval_s=settings.partition_interval_s,
        retention_s=settings.timeline_retention_s,
        metrics=metrics.partitions,
        wait=True,
    )


def _rate_limiter(
    settings: OrdersSettings, redis: Redis, metrics: OrdersMetrics
) -> RateLimiter | None:
    """The per-key limit of /orders, or None when ACME_API_RATE_PER_S is 0."""
    if not settings.api_rate_per_s:
        return None
    return RateLimiter(
        redis=redis,
        policy=Policy(settings.api_rate_per_s, settings.api_burst),
        fail_open=metrics.rate_limit_fail_open,
        refused=metrics.rate_limited,
        timeout_s=settings.redis_timeout_ms / 1000,
    )


def api_app(settings: OrdersSettings, metrics: OrdersMetrics | None = None) -> Litestar:
    """The API process's application: clients and the fast path live as long as the app."""
    metrics = metrics or OrdersMetrics()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with open_clients(settings) as clients:
            await _timeline_partitions_ready(settings, clients.pool, metrics)
            publisher = FastPathPublisher(
                clients.store,
                clients.redis,
                queue_size=settings.fast_path_queue_size,
                pause_ms=settings.fast_path_pause_ms,
                dedupe_ttl_s=settings.dedupe_ttl_s,
                metrics=metrics,
                shards=settings.stream_shards,
            )
            writer = GroupCommit(
                clients.store,
                max_in_flight=min(DEFAULT_MAX_IN_FLIGHT, settings.db_pool_max),
                observe_batch=metrics.orders_per_statement.observe,
            )
            app.state.service = OrderService(
                clients.store, publisher, db_timeout_s=settings.db_timeout_ms / 1000, writer=writer
            )
            app.state.ready_check = partial(_schema_ready, clients.store)
            app.state.rate_limiter = _rate_limiter(settings, clients.redis, metrics)
            app.state.authenticator = Authenticator(
                KeyStore(clients.pool),
                cache_s=settings.api_key_cache_s,
                db_timeout_s=settings.db_timeout_ms / 1000,
            )
            # /metrics on a listener of its own, off the public port (as the workers serve it).
            http = WorkerHttp(
                metrics.registry,
                settings.metrics_host,
                settings.metrics_port,
                partial(dependencies_answer, [app.state.ready_check]),
            )
            log.info("api_metrics_listening", metrics_port=await http.start())
            supervisor = Supervisor([publisher], grace_s=5)
            runner = asyncio.create_task(supervisor.run())
            freeze_startup_heap()
            try:
                with timing_collections(metrics.gc_pauses):
                    yield
            finally:
                await writer.close()
                supervisor.stop.set()
                await runner
                await http.stop()

    return build_app(lifespan=lifespan, max_body_bytes=settings.max_body_bytes, metrics=metrics)


def relay_actors(
    settings: OrdersSettings, clients: Clients, metrics: OrdersMetrics | None = None
) -> list[Actor]:
    """The actors of an `acme relay` process."""
    metrics = metrics or OrdersMetrics()
    return [
        OutboxRelay(
            clients.store,
            clients.redis,
            settings.database_url,
            poll_ms=settings.relay_poll_ms,
            grace_ms=settings.relay_grace_ms,
            batch=settings.relay_batch,
            dedupe_ttl_s=settings.dedupe_ttl_s,
            published=metrics.events_published.labels("relay"),
            shards=settings.stream_shards,
        ),
        Redriver(
            clients.store,
            clients.redis,
            older_than_s=settings.redrive_after_s,
            batch=settings.relay_batch,
            dedupe_ttl_s=settings.dedupe_ttl_s,
            published=metrics.events_published.labels("redrive"),
            shards=settings.stream_shards,
        ),
        Janitor(
            clients.store,
            interval_s=settings.janitor_interval_s,
            idempotency_ttl_s=settings.idempotency_ttl_s,
            partition_interval_s=settings.partition_interval_s,
            timeline_retention_s=settings.timeline_retention_s,
            partition_metrics=metrics.partitions,
        ),
        # Blocking reads must end before the client's socket timeout does. One consumer for
        # every shard on one Redis node (one read, one statement); one per shard on a cluster.
        *(
            ReceiptsConsumer(
                clients.store,
                clients.redis,
                consumer=settings.consumer_name,
                block_ms=max(10, settings.redis_timeout_ms // 2),
                linger_ms=settings.receipts_linger_ms,
                claim_idle_ms=settings.receipts_claim_idle_ms,
                applied=metrics.receipts_applied,
                on=on,
            )
            for on in _receipt_shards(settings, clients.redis)
        ),
        OutboxProbe(clients.store, metrics, interval_s=settings.outbox_probe_interval_s),
    ]


def _receipt_shards(settings: OrdersSettings, redis: Redis) -> list[tuple[Shard, ...]]:
    """The shards each receipts consumer serves: all of them together on one node, each on its
    own on a cluster (no read across slots)."""
    every = shards(settings.read_shards)
    return [(on,) for on in every] if is_cluster(redis) else [every]


async def run_relay(settings: OrdersSettings) -> None:
    """`acme relay`: runs until SIGTERM/SIGINT, then drains."""
    metrics = OrdersMetrics()
    async with open_clients(settings) as clients:

        async def ready() -> bool:
            return await dependencies_answer(
                [lambda: clients.pool.fetchval("SELECT 1"), clients.redis.ping]
            )

        await _timeline_partitions_ready(settings, clients.pool, metrics)
        http = WorkerHttp(metrics.registry, settings.metrics_host, settings.metrics_port, ready)
        port = await http.start()
        supervisor = Supervisor(
            relay_actors(settings, clients, metrics),
            grace_s=10,
            tick_failures=metrics.actor_tick_failures,
        )
        install_signal_handlers(supervisor.stop)
        log.info("relay_started", metrics_port=port)
        freeze_startup_heap()
        try:
            with timing_collections(metrics.gc_pauses):
                await supervisor.run()
        finally:
            await http.stop()
