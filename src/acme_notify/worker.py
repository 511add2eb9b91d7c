"""Composition root of a notifier replica (`acme notifier`).

Builds the Redis client, the ledger's PostgreSQL pool, the SMTP pool, the renderer and the
breaker from the settings, wires them into the actors, and runs the actors under one supervisor
until SIGTERM/SIGINT: then it stops reading, lets in-flight sends finish for `grace_s`, and
cancels what is left (those entries stay pending and another replica claims them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import structlog
from redis.asyncio import Redis

from acme_notify.archiver import Archiver
from acme_notify.claimer import Claimer, Heartbeat
from acme_notify.consumer import Consumer
from acme_notify.dead_archive import DeadArchive
from acme_notify.delivery import BreakerSync, Delivery
from acme_notify.flow import CircuitBreaker, RefusalStorm, TokenBucket
from acme_notify.ledger import LEDGER_TABLE, SendLedger
from acme_notify.probe import StreamProbe
from acme_notify.processor import Processor
from acme_notify.providers import FALLBACK, Provider
from acme_notify.reaper import Reaper
from acme_notify.render import Renderer
from acme_notify.settings import NotifySettings
from acme_notify.smtp import SmtpConfig, SmtpPool
from acme_notify.streams import Acks, Streams
from acme_notify.telemetry import CIRCUIT_STATES, NotifyMetrics
from acme_runtime.actors import Actor, PeriodicActor, Supervisor, install_signal_handlers
from acme_runtime.channels import Shard
from acme_runtime.channels import shards as shards_of
from acme_runtime.heap import freeze_startup_heap, timing_collections
from acme_runtime.metrics_http import WorkerHttp, dependencies_answer
from acme_runtime.partitions import maintain
from acme_runtime.pg import reset_connection
from acme_runtime.redis_client import open_redis

__all__ = ["Replica", "build_replica", "run_notifier"]

log = structlog.get_logger(__name__)


@dataclass
class Replica:
    """Everything one notifier replica runs, exposed for tests and metrics."""

    #: One per shard, by shard index.
    shards: list[Streams]
    processor: Processor
    delivery: Delivery
    ledger: SendLedger
    actors: list[Actor]
    metrics: NotifyMetrics


def build_replica(
    settings: NotifySettings,
    redis: Redis,
    pool: asyncpg.Pool,
    metrics: NotifyMetrics | None = None,
) -> Replica:
    metrics = metrics or NotifyMetrics()
    acks = Acks(redis)  # the acknowledgements of every shard, batched together
    shards = [
        Streams(redis, settings.consumer_name, shard=on, acks=acks)
        for on in shards_of(settings.read_shards)
    ]
    ledger = SendLedger(pool)
    delivery = _delivery(settings, redis, metrics)
    processor = Processor(
        streams=shards,
        ledger=ledger,
        renderer=Renderer(settings.from_address, settings.message_id_domain),
        send=delivery.send,
        concurrency=settings.concurrency,
        max_deliveries=settings.max_deliveries,
        record_patience_s=settings.ledger_patience_s,
        recipient_cap=settings.recipient_max_per_hour,
        recipient_window_s=settings.recipient_window_s,
        metrics=metrics,
    )
    _export_gauges(metrics, delivery, settings.smtp_fallback_alert_after_s)
    actors = _actors(settings, redis, pool, shards, processor, delivery, metrics)
    actors += [_archiver(settings, redis, pool, metrics, s.shard) for s in shards]
    return Replica(shards, processor, delivery, ledger, actors, metrics)


def _delivery(settings: NotifySettings, redis: Redis, metrics: NotifyMetrics) -> Delivery:
    """The SMTP gate: the primary provider and, when configured, the fallback."""
    pool, breaker, storm, rate = _provider_parts(
        settings, settings.smtp_url, settings.smtp_pool_size, settings.smtp_rate_per_s
    )
    fallback = None
    if settings.smtp_fallback_url is not None:
        parts = _provider_parts(
            settings,
            settings.smtp_fallback_url,
            settings.smtp_fallback_pool_size,
            settings.smtp_fallback_rate_per_s,
        )
        fallback = Provider(FALLBACK, parts[0], parts[1], redis, settings.consumer_name, *parts[2:])
    return Delivery(
        pool,
        breaker,
        redis,
        consumer=settings.consumer_name,
        rate=rate,
        storm=storm,
        fallback=fallback,
        metrics=metrics,
    )


async def _ledger_partitions(
    settings: NotifySettings,
    pool: asyncpg.Pool,
    metrics: NotifyMetrics,
    *,
    wait: bool = False,
) -> None:
    """One round of the ledger's partitions: the ledger janitor's, and once before a replica
    starts (`wait`: behind another replica's round rather than skipping it)."""
    await maintain(
        pool,
        LEDGER_TABLE,
        interval_s=settings.partition_interval_s,
        retention_s=settings.ledger_retention_s,
        metrics=metrics.partitions,
        wait=wait,
    )


def _actors(
    settings: NotifySettings,
    redis: Redis,
    pool: asyncpg.Pool,
    shards: list[Streams],
    processor: Processor,
    delivery: Delivery,
    metrics: NotifyMetrics,
) -> list[Actor]:
    """Every loop of a replica, one actor each; a reaper per shard (each with its lock)."""

    async def sweep_ledger() -> bool:
        await _ledger_partitions(settings, pool, metrics)
        return False

    reapers: list[Actor] = [
        Reaper(
            streams,
            interval_ms=settings.reaper_interval_ms,
            max_deliveries=settings.max_deliveries,
            min_idle_ms=3 * settings.heartbeat_interval_ms,
            retention_ms=settings.stream_retention_ms,
            dead_lettered=metrics.dead_lettered.labels("max_deliveries"),
        )
        for streams in shards
    ]
    return [
        Consumer(
            shards,
            processor,
            block_ms=settings.block_ms,
            capacity=delivery.capacity,
            linger_ms=settings.read_linger_ms,
        ),
        Claimer(
            shards,
            processor,
            interval_ms=settings.claim_interval_ms,
            base_ms=settings.backoff_base_ms,
            cap_ms=settings.backoff_max_ms,
            jitter=settings.backoff_jitter,
            max_deliveries=settings.max_deliveries,
            capacity=delivery.capacity,
        ),
        Heartbeat(shards, processor, interval_ms=settings.heartbeat_interval_ms),
        *reapers,
        BreakerSync(delivery),
        StreamProbe(
            redis,
            metrics,
            interval_s=settings.probe_interval_s,
            shards=[streams.shard for streams in shards],
        ),
        PeriodicActor("ledger-janitor", sweep_ledger, settings.ledger_janitor_interval_s),
    ]


def _archiver(
    settings: NotifySettings, redis: Redis, pool: asyncpg.Pool, metrics: NotifyMetrics, on: Shard
) -> Archiver:
    """Keeps a shard's dead stream bounded: its oldest entries move to notify.dead_letters."""
    return Archiver(
        redis,
        DeadArchive(pool),
        owner=settings.consumer_name,
        max_entries=settings.dead_max_entries,
        retention_s=settings.dead_retention_s,
        archive_retention_s=settings.dead_archive_retention_s,
        archived=metrics.dead_archived,
        expired=metrics.dead_archive_expired,
        on=on,
    )


def _provider_parts(
    settings: NotifySettings, url: str, pool_size: int, rate_per_s: float
) -> tuple[SmtpPool, CircuitBreaker, RefusalStorm, TokenBucket | None]:
    """One provider's own pool, breaker, storm detector and rate limit."""
    pool = SmtpPool(
        SmtpConfig.from_url(
            url,
            timeout_s=settings.smtp_timeout_s,
            pool_size=pool_size,
            helo_name=settings.smtp_helo_name,
        )
    )
    breaker = CircuitBreaker(
        settings.breaker_failures,
        settings.breaker_cooldown_s,
        max_cooldown_s=settings.breaker_max_cooldown_s,
    )
    storm = RefusalStorm(
        window_s=settings.storm_window_s,
        min_recipients=settings.storm_recipients,
        min_share=settings.storm_share,
    )
    rate = TokenBucket(rate_per_s, burst=max(1, int(rate_per_s))) if rate_per_s > 0 else None
    return pool, breaker, storm, rate


def _state_of(breaker: CircuitBreaker) -> Callable[[], float]:
    return lambda: CIRCUIT_STATES[breaker.state]


def _export_gauges(
    metrics: NotifyMetrics, delivery: Delivery, fallback_alert_after_s: float
) -> None:
    """Gauges read at scrape time: always current, no bookkeeping in the hot path."""
    providers = delivery.providers
    metrics.circuit_state.set_function(
        lambda: min(CIRCUIT_STATES[p.breaker.state] for p in providers)
    )
    for provider in providers:
        metrics.provider_circuit_state.labels(provider.name).set_function(
            _state_of(provider.breaker)
        )
    metrics.smtp_in_use.set_function(lambda: sum(p.pool.in_use for p in providers))
    metrics.smtp_open.set_function(lambda: sum(p.pool.size for p in providers))
    metrics.fallback_active.set_function(delivery.fallback_for_s)
    metrics.fallback_overdue.set_function(
        lambda: float(delivery.fallback_for_s() > fallback_alert_after_s)
    )


@asynccontextmanager
async def open_clients(settings: NotifySettings) -> AsyncIterator[tuple[Redis, asyncpg.Pool]]:
    pool = await asyncpg.create_pool(
        settings.database_url,
        min_size=1,
        max_size=settings.db_pool_max,
        command_timeout=5,
        reset=reset_connection,
        server_settings={"application_name": "acme-notifier"},
    )
    redis = open_redis(
        settings.redis_url,
        socket_timeout=5 + settings.block_ms / 1000,
        socket_connect_timeout=2,
        health_check_interval=30,
    )
    try:
        yield redis, pool
    finally:
        await redis.aclose()
        await pool.close()


async def run_notifier(settings: NotifySettings) -> None:
    metrics = NotifyMetrics()
    async with open_clients(settings) as (redis, pool):

        async def ready() -> bool:
            return await dependencies_answer([redis.ping, lambda: pool.fetchval("SELECT 1")])

        http = WorkerHttp(metrics.registry, settings.metrics_host, settings.metrics_port, ready)
        port = await http.start()
        # The ledger's partitions exist before the first e-mail whose row goes into them.
        await _ledger_partitions(settings, pool, metrics, wait=True)
        replica = build_replica(settings, redis, pool, metrics)
        supervisor = Supervisor(
            replica.actors, grace_s=settings.grace_s, tick_failures=metrics.actor_tick_failures
        )
        install_signal_handlers(supervisor.stop)
        log.info(
            "notifier_started",
            consumer=settings.consumer_name,
            concurrency=settings.concurrency,
            metrics_port=port,
            helo_name=settings.smtp_helo_name,
        )
        if "." not in settings.smtp_helo_name.strip("[]"):
            log.warning(
                "smtp_helo_name_not_fully_qualified",
                helo_name=settings.smtp_helo_name,
                hint="strict relays refuse it: set ACME_SMTP_HELO_NAME to this host's FQDN",
            )
        freeze_startup_heap()
        try:
            with timing_collections(metrics.gc_pauses):
                await supervisor.run()
        finally:
            await http.stop()
            await replica.delivery.close()
