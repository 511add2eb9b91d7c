"""The transactional outbox and publishing: atomic writes, exactly-once publish, re-drive."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from acme_cli.embedded import EmbeddedRedis
from acme_orders.contract import parse_order
from acme_orders.domain import OrderDraft
from acme_orders.events import build_envelope, encode_envelope
from acme_orders.publisher import FastPathPublisher, publish_batch
from acme_orders.relay import redrive_once, relay_once
from acme_orders.settings import OrdersSettings
from acme_orders.store import NewOrder, OrderStore, OutboxEvent
from acme_orders.telemetry import OrdersMetrics
from acme_runtime.channels import EVENTS_STREAM, published_key
from acme_runtime.ids import uuid7
from tests.harness import api_client, eventually
from tests.integration.test_api import ORDER


def draft() -> OrderDraft:
    parsed = parse_order(ORDER)
    assert isinstance(parsed, OrderDraft)
    return parsed


async def insert_order(store: OrderStore, at_ms: int | None = None) -> tuple[uuid.UUID, uuid.UUID]:
    """Writes an order (made now, or at `at_ms`) straight through the store, as a crashed API
    would have left it: (order id, event id)."""
    order_id, event_id = uuid7(at_ms), uuid7(at_ms)
    now = datetime.now(UTC) if at_ms is None else datetime.fromtimestamp(at_ms / 1000, UTC)
    envelope = encode_envelope(
        build_envelope(
            event_id=str(event_id),
            order_id=str(order_id),
            draft=draft(),
            created_at=now,
            traceparent=None,
        )
    )
    await store.create_order(
        NewOrder(
            order_id=order_id,
            event_id=event_id,
            draft=draft(),
            created_at=now,
            envelope=envelope,
            trace_id=None,
            idempotency_key=None,
        )
    )
    return order_id, event_id


async def insert_orders(store: OrderStore, count: int) -> list[uuid.UUID]:
    """Writes `count` orders through the store; returns their event ids."""
    return [(await insert_order(store))[1] for _ in range(count)]


async def stream_event_ids(redis: Redis) -> list[str]:
    return [fields[b"event_id"].decode() for _id, fields in await redis.xrange(EVENTS_STREAM)]


async def test_order_and_outbox_row_commit_together_or_not_at_all(pool: asyncpg.Pool) -> None:
    """A failure writing the outbox row leaves no order, no items, no timeline behind."""
    await pool.execute("""
        CREATE FUNCTION fail_outbox() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'injected outbox failure'; END $$;
        CREATE TRIGGER fail_outbox BEFORE INSERT ON outbox
        FOR EACH ROW EXECUTE FUNCTION fail_outbox();
    """)
    store = OrderStore(pool)
    with pytest.raises(asyncpg.RaiseError, match="injected outbox failure"):
        await insert_orders(store, 1)
    for table in ("orders", "order_items", "order_timeline", "outbox"):
        assert await pool.fetchval(f"SELECT count(*) FROM {table}") == 0, table  # noqa: S608


async def test_publish_once_script_adds_an_event_only_once(redis: Redis) -> None:
    """Publishing the same event twice returns the first entry id and adds nothing."""
    event = OutboxEvent(uuid7(), uuid7(), b"{}")
    first = await publish_batch(redis, [event], dedupe_ttl_s=60)
    second = await publish_batch(redis, [event, event], dedupe_ttl_s=60)
    assert first[0].added is True
    assert [r.added for r in second] == [False, False]
    assert {r.stream_id for r in second} == {first[0].stream_id}
    assert await redis.xlen(EVENTS_STREAM) == 1
    assert 0 < await redis.pttl(published_key(str(event.event_id))) <= 60_000


async def test_two_relays_at_once_publish_each_event_exactly_once(
    pool: asyncpg.Pool, redis: Redis
) -> None:
    """Concurrent relays (SKIP LOCKED + publish-once) put every event on the stream once."""
    store = OrderStore(pool)
    event_ids = await insert_orders(store, 60)
    relays = [relay_once(store, redis, grace_ms=0, batch=7, dedupe_ttl_s=60) for _ in range(12)]
    while sum(await asyncio.gather(*relays)):
        relays = [relay_once(store, redis, grace_ms=0, batch=7, dedupe_ttl_s=60) for _ in range(12)]
    published = await stream_event_ids(redis)
    assert sorted(published) == sorted(str(e) for e in event_ids)
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0


async def test_crash_between_xadd_and_outbox_update_does_not_duplicate(
    pool: asyncpg.Pool, redis: Redis
) -> None:
    """An event on the stream but not marked published is marked, not re-added, by the relay."""
    store = OrderStore(pool)
    [event_id] = await insert_orders(store, 1)
    async with pool.acquire() as conn:
        [event] = await store.lock_unpublished(conn, 0, 10)
    await publish_batch(redis, [event], dedupe_ttl_s=60)  # ...and the process dies here
    assert await relay_once(store, redis, grace_ms=0, batch=10, dedupe_ttl_s=60) == 1
    assert await stream_event_ids(redis) == [str(event_id)]
    row = await pool.fetchrow("SELECT published_at, publish_count FROM outbox")
    assert row is not None and row["published_at"] is not None and row["publish_count"] == 0


async def test_redrive_republishes_only_what_redis_lost(pool: asyncpg.Pool, redis: Redis) -> None:
    """After Redis loses its data, unconfirmed events go back on the stream, once."""
    store = OrderStore(pool)
    event_ids = await insert_orders(store, 3)
    await relay_once(store, redis, grace_ms=0, batch=10, dedupe_ttl_s=60)
    assert await redrive_once(store, redis, older_than_s=0, batch=10, dedupe_ttl_s=60) == 3
    assert await redis.xlen(EVENTS_STREAM) == 3, "Redis still had them: nothing re-added"

    await redis.flushall()  # Redis restarted without persistence
    await redrive_once(store, redis, older_than_s=0, batch=10, dedupe_ttl_s=60)
    assert sorted(await stream_event_ids(redis)) == sorted(str(e) for e in event_ids)
    kinds = await pool.fetch("SELECT kind FROM order_timeline WHERE kind = 'redriven'")
    assert len(kinds) == 3


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_order_accepted_while_redis_is_down_reaches_the_stream_later(
    own_redis: EmbeddedRedis, database_url: str, pool: asyncpg.Pool
) -> None:
    """With Redis stopped, POST still answers 201 fast; the relay publishes once Redis is back."""
    settings = OrdersSettings.from_env(
        {
            "ACME_DATABASE_URL": database_url,
            "ACME_REDIS_URL": own_redis.url,
            "ACME_REDIS_TIMEOUT_MS": "200",
            "ACME_METRICS_PORT": "0",
        }
    )
    own_redis.stop()
    async with api_client(settings) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        responses = [await client.post("/orders", json=ORDER) for _ in range(5)]
        elapsed_s = loop.time() - started
    assert [r.status_code for r in responses] == [201] * 5
    assert elapsed_s < 2.0, f"POST waited on Redis: {elapsed_s:.2f}s for 5 orders"
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 5

    own_redis.start()
    redis = Redis.from_url(own_redis.url)
    try:
        await relay_once(OrderStore(pool), redis, grace_ms=0, batch=100, dedupe_ttl_s=60)
        published = await stream_event_ids(redis)
    finally:
        await redis.aclose()
    order_ids = {r.json()["id"] for r in responses}
    event_rows = await pool.fetch("SELECT event_id::text AS e, order_id::text AS o FROM outbox")
    assert {row["o"] for row in event_rows} == order_ids
    assert sorted(published) == sorted(row["e"] for row in event_rows)


async def test_migrations_are_safe_to_run_twice_and_concurrently(database_url: str) -> None:
    """Concurrent `acme migrate` runs apply nothing twice and never fail."""
    from acme_cli.migrations import migrate

    results = await asyncio.gather(*[migrate(database_url) for _ in range(4)])
    assert results == [[], [], [], []], "the template already has every migration"


async def test_janitor_deletes_only_expired_idempotency_keys(pool: asyncpg.Pool) -> None:
    """Keys older than the TTL go, fresh ones stay: key storage stays bounded."""
    store = OrderStore(pool)
    await pool.execute(
        "INSERT INTO idempotency_keys (key, request_hash, order_id, created_at) VALUES"
        " ('old', '\\x00', gen_random_uuid(), now() - interval '2 days'),"
        " ('new', '\\x00', gen_random_uuid(), now())"
    )
    assert await store.delete_expired_keys(ttl_s=86_400) == 1
    remaining: list[Any] = await pool.fetch("SELECT key FROM idempotency_keys")
    assert [r["key"] for r in remaining] == ["new"]


async def test_the_fast_path_records_its_publishes_together_after_a_short_linger(
    pool: asyncpg.Pool, redis: Redis
) -> None:
    """Three batches published 50 ms apart reach the stream at once, and are recorded in the
    outbox together once the linger is over (one UPDATE, not three); what is gathered when the
    publisher stops is recorded before it ends."""
    store = OrderStore(pool)
    publisher = FastPathPublisher(
        store,
        redis,
        queue_size=100,
        pause_ms=100,
        dedupe_ttl_s=60,
        metrics=OrdersMetrics(),
        record_linger_ms=400,
    )
    await insert_orders(store, 6)
    events = await store.lock_unpublished(pool, grace_ms=-1_000, limit=100)
    stop = asyncio.Event()
    runner = asyncio.create_task(publisher.run(stop))
    try:
        for batch in (events[0:2], events[2:4], events[4:6]):
            for event in batch:
                publisher.submit(event)
            await asyncio.sleep(0.05)  # the schedule of the three batches, not a wait
        await eventually(lambda: _stream_length_is(redis, 6), timeout_s=5)
        assert await _recorded(pool) == 0, "recorded before the linger was over"
        await eventually(lambda: _recorded_is(pool, 6), timeout_s=5)
        recorded_at = await pool.fetch("SELECT DISTINCT published_at FROM outbox")
        assert len(recorded_at) == 1, "the three batches were recorded by one statement"
        await insert_orders(store, 2)
        for event in await store.lock_unpublished(pool, grace_ms=-1_000, limit=100):
            publisher.submit(event)
    finally:
        stop.set()
        await runner
    assert await _recorded(pool) == 8, "the last publishes were recorded as the publisher stopped"


async def _recorded(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL"))


async def _recorded_is(pool: asyncpg.Pool, count: int) -> bool:
    return await _recorded(pool) == count


async def _stream_length_is(redis: Redis, count: int) -> bool:
    return int(await redis.xlen(EVENTS_STREAM)) == count
