"""A sent e-mail is never reported dead, even when the reaper took its entry mid-send.

The race: an entry on its last delivery is being sent to a slow SMTP server while its
replica's heartbeat cannot reach Redis; after three heartbeat intervals without a beat the
entry looks abandoned, and another replica's reaper dead-letters it (a `dead` receipt). Then
the server accepts the e-mail. Real PostgreSQL, Redis and SMTP servers throughout; the
heartbeat's Redis is a port where nothing listens.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from acme_cli.embedded import free_port
from acme_cli.smtp_sink import MailSink
from acme_notify.claimer import Heartbeat
from acme_notify.keys import DEAD_STREAM, EVENTS_STREAM, NOTIFIER_GROUP, RECEIPTS_STREAM
from acme_notify.reaper import Reaper
from acme_notify.streams import RawEntry, Streams
from acme_orders.events import stream_fields
from acme_orders.receipts import apply_receipts
from acme_runtime.actors import Supervisor
from tests.harness import Rig, build_rig, eventually
from tests.integration.test_receipts import one_order

pytestmark = pytest.mark.slow

MAX_DELIVERIES = 3
HEARTBEAT_INTERVAL_MS = 50


@pytest.fixture
async def rig(redis: Redis, pool: asyncpg.Pool, sink: MailSink) -> AsyncIterator[Rig]:
    """The replica `solo`: a processor with a real SMTP pool (against `sink`) and ledger."""
    rig = build_rig(
        redis, pool, sink.url, concurrency=4, max_deliveries=MAX_DELIVERIES, smtp_timeout_s=10
    )
    try:
        yield rig
    finally:
        await rig.smtp.close()


async def publish_order(redis: Redis, pool: asyncpg.Pool) -> tuple[Any, str, str]:
    """An order written by the order service, its outbox event on the stream as the relay puts
    it there: (store, event id, order id)."""
    store, event_id, order_id = await one_order(pool)
    envelope = await pool.fetchval(
        "SELECT envelope FROM outbox WHERE event_id = $1", uuid.UUID(event_id)
    )
    flat = stream_fields(event_id, order_id, bytes(envelope))
    await redis.xadd(EVENTS_STREAM, dict(zip(flat[::2], flat[1::2], strict=True)))
    return store, event_id, order_id


async def deliveries_of(redis: Redis, entry_id: str) -> int:
    rows: Any = await redis.xpending_range(EVENTS_STREAM, NOTIFIER_GROUP, entry_id, entry_id, 1)
    return int(rows[0]["times_delivered"])


async def test_an_email_accepted_after_its_entry_was_reaped_leaves_the_order_sent(
    redis: Redis, pool: asyncpg.Pool, sink: MailSink, rig: Rig
) -> None:
    """Last delivery, heartbeat stalled for more than 3 intervals, the reaper dead-letters the
    entry mid-send, then SMTP accepts: the `sent` receipt still goes out, after the `dead` one,
    and the order, dead for a moment, ends `sent` with its three tries counted."""
    store, event_id, _order_id = await publish_order(redis, pool)
    await rig.streams.ensure_group()
    [(entry_id, fields, *_rest)] = await rig.streams.read_new(1, 10)

    # Two tries the mailbox refuses for now; the claimer's XCLAIM counts each new delivery.
    sink.policy = lambda _envelope: "450 4.2.0 mailbox busy"
    await rig.process(RawEntry(entry_id, fields, 1))
    for delivery in range(2, MAX_DELIVERIES + 1):
        await redis.xclaim(EVENTS_STREAM, NOTIFIER_GROUP, "solo", 0, [entry_id])
        assert await deliveries_of(redis, entry_id) == delivery
        if delivery < MAX_DELIVERIES:
            await rig.process(RawEntry(entry_id, fields, delivery))
    sink.policy = None
    assert sink.messages == []

    # The last try meets a server that stalls at RCPT (nothing delivered yet).
    release = asyncio.Event()

    async def stall(_address: str) -> None:
        await release.wait()

    sink.rcpt_policy = stall
    rig.processor.submit(RawEntry(entry_id, fields, MAX_DELIVERIES))

    unreachable = Redis.from_url(f"redis://127.0.0.1:{free_port()}")
    heartbeat = Heartbeat(
        Streams(unreachable, "solo"), rig.processor, interval_ms=HEARTBEAT_INTERVAL_MS
    )
    reaper = Reaper(
        Streams(redis, "other"),
        interval_ms=50,
        max_deliveries=MAX_DELIVERIES,
        min_idle_ms=3 * HEARTBEAT_INTERVAL_MS,
        retention_ms=3_600_000,
    )
    supervisor = Supervisor([heartbeat, reaper], grace_s=5)
    running = asyncio.create_task(supervisor.run())
    try:

        async def reaped() -> bool:
            return await redis.xlen(DEAD_STREAM) == 1

        await eventually(reaped, timeout_s=10, what="the reaper to dead-letter the entry")
        assert (0, entry_id) in rig.processor.in_flight, "still sending when it was reaped"
        assert sink.messages == []
        release.set()
        await rig.processor.drain()
    finally:
        release.set()
        supervisor.stop.set()
        await running
        await unreachable.aclose()

    [accepted] = sink.messages
    assert await rig.ledger.already_sent(event_id) == accepted.message_id
    assert rig.bookkeeping_failures("ack") == 0
    [(_dead_id, dead)] = await redis.xrange(DEAD_STREAM)
    assert dead[b"original_id"] == entry_id.encode()
    assert dead[b"reason_class"] == b"max_deliveries"
    assert dead[b"last_error"] == b"450 4.2.0 mailbox busy"

    receipts: Any = await redis.xrange(RECEIPTS_STREAM)
    kinds = [fields[b"type"].decode() for _sid, fields in receipts]
    assert kinds == ["attempt_failed", "attempt_failed", "dead", "sent"]
    statuses = []
    for source_id, receipt_fields in receipts:  # one at a time, in stream order
        assert await apply_receipts(store, [(source_id.decode(), receipt_fields)]) == 1
        statuses.append(await pool.fetchval("SELECT notification_status FROM orders"))
    assert statuses == ["pending", "pending", "dead", "sent"]
    row = await pool.fetchrow("SELECT notification_detail, delivery_attempts FROM orders")
    assert row is not None
    assert (row["notification_detail"], row["delivery_attempts"]) == (accepted.message_id, 3)
