"""`acme_actor_tick_failures_total{actor}`: every failed round of a periodic actor is counted.

The failure is a real one: the notifier's claimer and reaper talk to a Redis port where nothing
listens, under a `Supervisor` that hands each periodic actor its child of the counter.
"""

from __future__ import annotations

import asyncio

import asyncpg
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from acme_cli.embedded import free_port
from acme_notify.claimer import Claimer
from acme_notify.delivery import Delivery
from acme_notify.flow import CircuitBreaker
from acme_notify.ledger import SendLedger
from acme_notify.processor import Processor
from acme_notify.reaper import Reaper
from acme_notify.render import Renderer
from acme_notify.smtp import SmtpConfig, SmtpPool
from acme_notify.streams import Streams
from acme_runtime.actors import PeriodicActor, Supervisor, tick_failures_counter
from tests.harness import eventually


def failures(registry: CollectorRegistry, actor: str) -> float | None:
    return registry.get_sample_value("acme_actor_tick_failures_total", {"actor": actor})


async def test_rounds_failing_on_an_unreachable_redis_are_counted_per_actor(
    pool: asyncpg.Pool,
) -> None:
    """A claimer and a reaper whose Redis refuses connections fail round after round, each
    round counted under its own name, and keep running (no crash, no restart)."""
    unreachable = Redis.from_url(f"redis://127.0.0.1:{free_port()}")
    streams = Streams(unreachable, "n1")
    # Never started: a claim fails before anything could be sent.
    smtp = SmtpPool(SmtpConfig.from_url("smtp://127.0.0.1:25", timeout_s=1, pool_size=1))
    processor = Processor(
        streams=streams,
        ledger=SendLedger(pool),
        renderer=Renderer("AcME <pedidos@acme.example>", "acme.example"),
        send=Delivery(smtp, CircuitBreaker(5, 1.0), unreachable, consumer="n1").send,
        concurrency=4,
        max_deliveries=3,
    )
    claimer = Claimer(
        streams,
        processor,
        interval_ms=20,
        base_ms=100,
        cap_ms=1_000,
        jitter=0.0,
        max_deliveries=3,
        capacity=lambda free: free,
    )
    reaper = Reaper(streams, interval_ms=20, max_deliveries=3, min_idle_ms=100, retention_ms=60_000)
    registry = CollectorRegistry()
    supervisor = Supervisor(
        [claimer, reaper], grace_s=2, tick_failures=tick_failures_counter(registry)
    )
    running = asyncio.create_task(supervisor.run())
    try:

        async def both_failed_repeatedly() -> bool:
            counts = [failures(registry, name) or 0.0 for name in ("claimer", "reaper")]
            return min(counts) >= 3

        await eventually(both_failed_repeatedly, timeout_s=10, what="three failed rounds each")
    finally:
        supervisor.stop.set()
        await running
        await unreachable.aclose()
        await smtp.close()
    assert supervisor.restarts == {}, "a failed round is not a crash"


async def test_successful_rounds_count_no_failure() -> None:
    """A periodic actor whose rounds succeed runs them with its counter child left at 0."""
    rounds = 0

    async def tick() -> bool:
        nonlocal rounds
        rounds += 1
        return False

    registry = CollectorRegistry()
    supervisor = Supervisor(
        [PeriodicActor("janitor", tick, 0.01)],
        grace_s=1,
        tick_failures=tick_failures_counter(registry),
    )
    running = asyncio.create_task(supervisor.run())
    try:

        async def ran_a_few() -> bool:
            return rounds >= 5

        await eventually(ran_a_few, timeout_s=5, what="five rounds")
    finally:
        supervisor.stop.set()
        await running
    assert failures(registry, "janitor") == 0.0
