"""The order service applies the notifier's receipts: status, attempts, timeline, outbox end."""

from __future__ import annotations

import asyncio
import re
import uuid
from typing import Any, cast

import asyncpg
import pytest
from redis.asyncio import Redis

from acme_orders.publisher import publish_batch
from acme_orders.receipts import Receipt, ReceiptsConsumer, apply_receipts
from acme_orders.relay import redrive_once, relay_once
from acme_orders.store import OrderStore
from acme_runtime.channels import RECEIPTS_GROUP, RECEIPTS_STREAM, published_key, shards
from acme_runtime.ids import uuid7_time_ms
from acme_runtime.lua import load_script
from tests.harness import eventually
from tests.integration.test_outbox import insert_orders, stream_event_ids


async def order_ids(pool: asyncpg.Pool) -> list[str]:
    return [str(r["order_id"]) for r in await pool.fetch("SELECT order_id FROM outbox")]


async def one_order(pool: asyncpg.Pool) -> tuple[OrderStore, str, str]:
    """A store over `pool` holding one freshly written order: (store, event id, order id)."""
    store = OrderStore(pool)
    [event_id] = await insert_orders(store, 1)
    [order_id] = await order_ids(pool)
    return store, str(event_id), order_id


def receipt(
    kind: str, event_id: str, order_id: str, attempts: int, at_ms: int, detail: str = ""
) -> dict[str, str]:
    return {
        "type": kind,
        "event_id": event_id,
        "order_id": order_id,
        "at_ms": str(at_ms),
        "attempts": str(attempts),
        "consumer": "n1",
        "reason_class": "",
        "detail": detail,
    }


#: A receipt time (ms since the epoch) the tests count from.
T = 1_800_000_000_000


def entry(
    source_id: str,
    kind: str,
    event_id: str,
    order_id: str,
    at_ms: int,
    detail: str = "",
    reason_class: str = "",
) -> Receipt:
    """A receipt as the consumer reads it from the stream: (stream id, fields)."""
    fields = receipt(kind, event_id, order_id, 1, at_ms, detail) | {"reason_class": reason_class}
    return source_id, {k.encode(): v.encode() for k, v in fields.items()}


async def notification(pool: asyncpg.Pool) -> tuple[str, str | None, int | None, int]:
    """The one order's (status, detail, updated_at in ms, delivery attempts)."""
    row = await pool.fetchrow(
        "SELECT notification_status, notification_detail, delivery_attempts,"
        " (extract(epoch FROM notification_updated_at) * 1000)::bigint AS updated_ms"
        " FROM orders"
    )
    assert row is not None
    return (
        row["notification_status"],
        row["notification_detail"],
        row["updated_ms"],
        row["delivery_attempts"],
    )


async def test_sent_receipt_marks_the_order_and_ends_the_outbox_row(
    pool: asyncpg.Pool, redis: Redis
) -> None:
    """After a failed try and a success, the order is sent after 2 attempts; outbox row gone."""
    store, event_id, order_id = await one_order(pool)
    consumer = ReceiptsConsumer(store, redis, consumer="orders-test", block_ms=10)
    await redis.xadd(
        RECEIPTS_STREAM,
        receipt("attempt_failed", str(event_id), order_id, 1, 1_800_000_000_000, "421 try later"),
    )
    await redis.xadd(
        RECEIPTS_STREAM, receipt("sent", str(event_id), order_id, 2, 1_800_000_005_000, "<m@acme>")
    )
    await consumer.ensure_groups()
    assert await consumer.consume_once() == 2
    row = await pool.fetchrow(
        "SELECT notification_status, delivery_attempts, notification_detail FROM orders"
    )
    assert row is not None
    assert (row["notification_status"], row["delivery_attempts"]) == ("sent", 2)
    assert row["notification_detail"] == "<m@acme>"
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    kinds = [
        r["kind"] for r in await pool.fetch("SELECT kind FROM order_timeline ORDER BY at, seq")
    ]
    assert kinds == ["created", "attempt_failed", "sent"]
    assert await redis.xlen(RECEIPTS_STREAM) == 0, "applied receipts are removed"


async def test_receipts_applied_twice_change_nothing(pool: asyncpg.Pool, redis: Redis) -> None:
    """Re-applying a receipt (a crash before XACK) adds no second timeline entry."""
    store, event_id, order_id = await one_order(pool)
    fields = {
        k.encode(): v.encode()
        for k, v in receipt("sent", str(event_id), order_id, 1, 1_800_000_000_000).items()
    }
    await apply_receipts(store, [("1-1", fields)])
    await apply_receipts(store, [("1-1", fields)])
    assert await pool.fetchval("SELECT count(*) FROM order_timeline WHERE kind = 'sent'") == 1


async def test_a_sent_order_never_turns_dead(pool: asyncpg.Pool, redis: Redis) -> None:
    """A late dead receipt after a sent one leaves the order sent."""
    store, event_id, order_id = await one_order(pool)

    def raw(kind: str, source: str) -> tuple[str, dict[bytes, bytes]]:
        return source, {
            k.encode(): v.encode()
            for k, v in receipt(kind, str(event_id), order_id, 1, 1_800_000_000_000).items()
        }

    await apply_receipts(store, [raw("sent", "1-1")])
    await apply_receipts(store, [raw("dead", "1-2")])
    assert await pool.fetchval("SELECT notification_status FROM orders") == "sent"


async def test_a_late_attempt_failed_leaves_a_dead_order_as_it_was(pool: asyncpg.Pool) -> None:
    """A try that fails after the order died changes neither status, detail nor time."""
    store, event_id, order_id = await one_order(pool)
    await apply_receipts(store, [entry("1-1", "dead", event_id, order_id, T, "550 no such user")])
    await apply_receipts(
        store, [entry("1-2", "attempt_failed", event_id, order_id, T + 1_000, "421 try later")]
    )
    # The late try did happen, so it counts.
    assert await notification(pool) == ("dead", "550 no such user", T, 2)


async def test_a_late_attempt_failed_leaves_a_sent_order_as_it_was(pool: asyncpg.Pool) -> None:
    """A try that fails after the order was sent changes neither status, detail nor time."""
    store, event_id, order_id = await one_order(pool)
    await apply_receipts(store, [entry("1-1", "sent", event_id, order_id, T, "<m@acme>")])
    await apply_receipts(
        store, [entry("1-2", "attempt_failed", event_id, order_id, T + 1_000, "421 try later")]
    )
    assert await notification(pool) == ("sent", "<m@acme>", T, 2)


async def test_a_receipt_applied_again_after_a_newer_one_changes_nothing(
    pool: asyncpg.Pool, redis: Redis
) -> None:
    """A receipt re-read from a crashed consumer's pending list after a newer one changes
    nothing: not the status, the detail, the time nor the attempts."""
    store, event_id, order_id = await one_order(pool)
    crashed = ReceiptsConsumer(store, redis, consumer="orders-crashed", block_ms=10)
    await crashed.ensure_groups()
    await redis.xadd(
        RECEIPTS_STREAM, receipt("attempt_failed", event_id, order_id, 1, T, "421 first")
    )
    # The consumer reads and applies the first receipt, and dies before its XACK.
    reply: Any = await redis.xreadgroup(
        RECEIPTS_GROUP, "orders-crashed", {RECEIPTS_STREAM: ">"}, count=10
    )
    [(_stream, [(first_id, first_fields)])] = reply
    assert await apply_receipts(store, [(first_id.decode(), first_fields)]) == 1
    # Another replica applies the next try's receipt.
    await redis.xadd(
        RECEIPTS_STREAM, receipt("attempt_failed", event_id, order_id, 2, T + 1_000, "450 second")
    )
    other = ReceiptsConsumer(store, redis, consumer="orders-other", block_ms=10)
    assert await other.consume_once() == 1
    before = await notification(pool)
    assert before == ("pending", "450 second", T + 1_000, 2)
    # The crashed consumer restarts: its pending receipt is read and applied again.
    restarted = ReceiptsConsumer(store, redis, consumer="orders-crashed", block_ms=10)
    assert await restarted.consume_once() == 1
    assert await notification(pool) == before
    assert await pool.fetchval("SELECT count(*) FROM order_timeline") == 3
    pending: Any = await redis.xpending(RECEIPTS_STREAM, RECEIPTS_GROUP)
    assert int(pending["pending"]) == 0


async def test_a_sent_after_a_dead_turns_the_order_sent(pool: asyncpg.Pool) -> None:
    """A dead order whose e-mail is sent after all (a replayed dead letter) turns sent."""
    store, event_id, order_id = await one_order(pool)
    await apply_receipts(store, [entry("1-1", "dead", event_id, order_id, T, "421 max tries")])
    await apply_receipts(store, [entry("1-2", "sent", event_id, order_id, T + 60_000, "<m@a>")])
    assert await notification(pool) == ("sent", "<m@a>", T + 60_000, 2)


async def test_a_dead_after_a_sent_leaves_the_order_sent_with_its_detail(
    pool: asyncpg.Pool,
) -> None:
    """A later dead receipt leaves a sent order's status, detail and time."""
    store, event_id, order_id = await one_order(pool)
    await apply_receipts(store, [entry("1-1", "sent", event_id, order_id, T, "<m@a>")])
    await apply_receipts(
        store,
        [entry("1-2", "dead", event_id, order_id, T + 1_000, "gone", "max_deliveries")],
    )
    assert await notification(pool) == ("sent", "<m@a>", T, 1)


async def test_a_second_sent_keeps_the_first_ones_detail_and_time(pool: asyncpg.Pool) -> None:
    """A duplicate send adds its timeline row but the order keeps the first send's data."""
    store, event_id, order_id = await one_order(pool)
    await apply_receipts(store, [entry("1-1", "sent", event_id, order_id, T, "<m1@a>")])
    await apply_receipts(store, [entry("1-2", "sent", event_id, order_id, T + 1_000, "<m2@a>")])
    assert await notification(pool) == ("sent", "<m1@a>", T, 2)
    assert await pool.fetchval("SELECT count(*) FROM order_timeline WHERE kind = 'sent'") == 2


@pytest.mark.parametrize("kind", ["attempt_failed", "dead"])
async def test_an_older_receipt_applied_after_a_newer_one_leaves_detail_and_time(
    pool: asyncpg.Pool, kind: str
) -> None:
    """An older receipt of the same kind applied late never moves the order back in time."""
    store, event_id, order_id = await one_order(pool)
    await apply_receipts(store, [entry("1-2", kind, event_id, order_id, T + 1_000, "newer")])
    await apply_receipts(store, [entry("1-1", kind, event_id, order_id, T, "older")])
    status = "dead" if kind == "dead" else "pending"
    assert await notification(pool) == (status, "newer", T + 1_000, 2)


async def test_the_first_error_shows_even_if_older_than_the_publish_stamp(
    pool: asyncpg.Pool,
) -> None:
    """PostgreSQL's publish stamp may follow the notifier's first try: its error still shows."""
    store, event_id, order_id = await one_order(pool)
    await pool.execute(
        "UPDATE orders SET notification_status = 'published',"
        " notification_updated_at = to_timestamp($1 / 1000.0)",
        T + 50,
    )
    await apply_receipts(store, [entry("1-1", "attempt_failed", event_id, order_id, T, "421")])
    assert await notification(pool) == ("published", "421", T + 50, 1)


async def test_malformed_receipts_are_skipped(pool: asyncpg.Pool) -> None:
    """A receipt with a bad id or type is logged and skipped, not fatal."""

    applied = await apply_receipts(
        OrderStore(pool),
        [
            ("1-1", {b"type": b"sent", b"event_id": b"nope", b"order_id": b"x", b"at_ms": b"1"}),
            ("1-2", {b"type": b"exploded"}),
        ],
    )
    assert applied == 0


class CountingPool:
    """The real pool, counting the statements the receipts consumer sends through it, and
    those PostgreSQL refused."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.statements = 0
        self.refused = 0

    async def execute(self, query: str, *args: object) -> str:
        self.statements += 1
        try:
            result: str = await self._pool.execute(query, *args)
        except asyncpg.PostgresError:
            self.refused += 1
            raise
        return result


async def test_a_settled_events_publish_once_key_goes_with_its_receipt_and_no_sooner(
    pool: asyncpg.Pool, redis: Redis
) -> None:
    """Sent and dead receipts remove their events' publish-once keys; an attempt_failed
    (still in flight) and an event with no receipt keep theirs, so a re-drive still cannot
    publish them twice, and nothing settled is published again."""
    store = OrderStore(pool)
    event_ids = [str(e) for e in await insert_orders(store, 4)]
    await relay_once(store, redis, grace_ms=0, batch=10, dedupe_ttl_s=3_600)
    orders = {
        str(r["event_id"]): str(r["order_id"]) for r in await pool.fetch("SELECT * FROM outbox")
    }
    sent, dead, failing, quiet = event_ids
    for kind, event_id in (("sent", sent), ("dead", dead), ("attempt_failed", failing)):
        await redis.xadd(RECEIPTS_STREAM, receipt(kind, event_id, orders[event_id], 1, T))
    consumer = ReceiptsConsumer(store, redis, consumer="orders-test", block_ms=10)
    await consumer.ensure_groups()
    assert await consumer.consume_once() == 3

    left = {e for e in event_ids if await redis.exists(published_key(e))}
    assert left == {failing, quiet}
    assert await redrive_once(store, redis, older_than_s=0, batch=10, dedupe_ttl_s=3_600) == 2
    assert sorted(await stream_event_ids(redis)) == sorted(event_ids), "nothing published twice"


async def test_a_trickle_of_receipts_is_applied_in_few_statements_while_lingering(
    pool: asyncpg.Pool, redis: Redis
) -> None:
    """Receipts arriving 10 ms apart for 0.6 s are applied in a few batches, not one each."""
    store = OrderStore(pool)
    event_ids = await insert_orders(store, 60)
    by_event = {
        str(r["event_id"]): str(r["order_id"])
        for r in await pool.fetch("SELECT event_id, order_id FROM outbox")
    }
    counting = CountingPool(pool)
    store.pool = cast(asyncpg.Pool, counting)
    consumer = ReceiptsConsumer(store, redis, consumer="orders-test", block_ms=50, linger_ms=200)
    stop = asyncio.Event()
    runner = asyncio.create_task(consumer.run(stop))
    try:
        for n, event_id in enumerate(event_ids):
            await redis.xadd(
                RECEIPTS_STREAM,
                receipt("sent", str(event_id), by_event[str(event_id)], 1, 1_800_000_000_000 + n),
            )
            await asyncio.sleep(0.01)  # the trickle itself: one receipt every 10 ms

        async def all_sent() -> bool:
            n_sent = await pool.fetchval(
                "SELECT count(*) FROM orders WHERE notification_status = 'sent'"
            )
            return bool(n_sent == 60)

        await eventually(all_sent, what="every receipt to be applied")
    finally:
        stop.set()
        await runner
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    # ~0.7 s of arrivals at one read per 200 ms linger: a handful of statements, not 60.
    assert counting.statements <= 10, f"{counting.statements} statements for 60 receipts"


async def test_receipts_left_pending_by_a_departed_relay_are_claimed_and_applied(
    pool: asyncpg.Pool, redis: Redis
) -> None:
    store, event_id, order_id = await one_order(pool)
    departed = ReceiptsConsumer(store, redis, consumer="orders-departed", block_ms=10)
    await departed.ensure_groups()
    await redis.xadd(
        RECEIPTS_STREAM, receipt("sent", str(event_id), order_id, 1, 1_800_000_000_000, "<m@a>")
    )
    # The departed replica read the receipt and died before applying it.
    await redis.xreadgroup(RECEIPTS_GROUP, "orders-departed", {RECEIPTS_STREAM: ">"}, count=10)
    survivor = ReceiptsConsumer(
        store,
        redis,
        consumer="orders-survivor",
        block_ms=10,
        claim_idle_ms=1_000,
        claim_interval_ms=500,
    )
    assert await survivor.consume_once() == 0  # not idle long enough yet: left alone

    async def idle_long_enough() -> bool:
        # Redis's own idle time, the one XAUTOCLAIM compares with claim_idle_ms. By then the
        # survivor's 500 ms claim interval, started just after the departed read, is over too.
        stale: Any = await redis.xpending_range(
            RECEIPTS_STREAM, RECEIPTS_GROUP, "-", "+", 10, idle=1_000
        )
        return len(stale) == 1

    await eventually(idle_long_enough, timeout_s=5, what="the receipt to be idle for 1 s")
    assert await survivor.consume_once() == 1
    status = await pool.fetchval("SELECT notification_status FROM orders")
    assert status == "sent"
    pending: Any = await redis.xpending(RECEIPTS_STREAM, RECEIPTS_GROUP)
    assert int(pending["pending"]) == 0


async def test_receipts_read_when_the_database_failed_are_applied_once_it_answers(
    pool: asyncpg.Pool, redis: Redis
) -> None:
    """A batch that PostgreSQL refused stays pending with the consumer and is applied as soon as
    PostgreSQL answers again, not after the 30 s take-over of departed replicas."""
    store, event_id, order_id = await one_order(pool)
    counting = CountingPool(pool)
    store.pool = cast(asyncpg.Pool, counting)
    consumer = ReceiptsConsumer(store, redis, consumer="orders-test", block_ms=20)
    await consumer.ensure_groups()  # before polling the group's pending count below
    await pool.execute("ALTER TABLE order_timeline RENAME TO order_timeline_gone")
    stop = asyncio.Event()
    runner = asyncio.create_task(consumer.run(stop))
    try:
        await redis.xadd(
            RECEIPTS_STREAM, receipt("sent", event_id, order_id, 1, 1_800_000_000_000, "<m@a>")
        )

        async def read_and_pending() -> bool:
            pending: Any = await redis.xpending(RECEIPTS_STREAM, RECEIPTS_GROUP)
            return int(pending["pending"]) == 1

        await eventually(read_and_pending, what="the receipt to be read")

        async def refused_twice() -> bool:
            return counting.refused >= 2

        # The batch failed, and failed again when the consumer retried its pending receipt.
        await eventually(refused_twice, what="two tries of the batch refused by PostgreSQL")
        await pool.execute("ALTER TABLE order_timeline_gone RENAME TO order_timeline")

        async def applied() -> bool:
            status = await pool.fetchval("SELECT notification_status FROM orders")
            return bool(status == "sent")

        await eventually(applied, timeout_s=5, what="the receipt to be applied")
    finally:
        stop.set()
        await runner
    pending: Any = await redis.xpending(RECEIPTS_STREAM, RECEIPTS_GROUP)
    assert int(pending["pending"]) == 0


async def test_hostile_receipts_are_skipped_and_the_good_ones_in_their_batch_applied(
    pool: asyncpg.Pool, redis: Redis
) -> None:
    """A timestamp past year 9999 or a NUL in a detail cannot wedge the receipts stream."""
    store, event_id, order_id = await one_order(pool)
    consumer = ReceiptsConsumer(store, redis, consumer="orders-test", block_ms=10)
    await consumer.ensure_groups()
    other = str(uuid.uuid4())
    await redis.xadd(RECEIPTS_STREAM, receipt("attempt_failed", other, other, 1, 10**18))
    await redis.xadd(
        RECEIPTS_STREAM, receipt("sent", event_id, order_id, 1, 1_800_000_000_000, "<m@a>\x00x")
    )
    assert await consumer.consume_once() == 2
    row = await pool.fetchrow("SELECT notification_status, notification_detail FROM orders")
    assert row is not None and (row["notification_status"], row["notification_detail"]) == (
        "sent",
        "<m@a>x",
    )
    pending: Any = await redis.xpending(RECEIPTS_STREAM, RECEIPTS_GROUP)
    assert int(pending["pending"]) == 0


async def refuse_in_postgresql(pool: asyncpg.Pool, source_id: str) -> None:
    """PostgreSQL itself refuses the timeline row of receipt `source_id` with a data exception
    (SQLSTATE 22023, class 22, which asyncpg raises as a `DataError` subclass)."""
    assert re.fullmatch(r"\d+-\d+", source_id), source_id  # a stream id: safe in the DDL
    await pool.execute(f"""
        CREATE FUNCTION refuse_receipt() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.source_id = '{source_id}' THEN
                RAISE EXCEPTION 'receipt % refused', NEW.source_id USING ERRCODE = '22023';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_receipt BEFORE INSERT ON order_timeline
            FOR EACH ROW EXECUTE FUNCTION refuse_receipt();
    """)


async def test_postgresql_refusing_a_receipt_raises_the_data_error_the_consumer_catches(
    pool: asyncpg.Pool,
) -> None:
    """The refusal the next test relies on is an asyncpg.DataError, as `consume_once` expects."""

    store, event_id, order_id = await one_order(pool)
    await refuse_in_postgresql(pool, "1-1")
    with pytest.raises(asyncpg.DataError) as refused:
        await apply_receipts(store, [entry("1-1", "sent", event_id, order_id, T)])
    assert isinstance(refused.value, asyncpg.InvalidParameterValueError)


async def test_a_batch_postgresql_refuses_is_applied_one_by_one_around_the_bad_receipt(
    pool: asyncpg.Pool, redis: Redis
) -> None:
    """A receipt PostgreSQL refuses is skipped and acknowledged; the rest of its batch applied."""
    store, event_id, order_id = await one_order(pool)
    await redis.xgroup_create(RECEIPTS_STREAM, RECEIPTS_GROUP, id="0", mkstream=True)
    bad_id = await redis.xadd(
        RECEIPTS_STREAM, receipt("attempt_failed", event_id, order_id, 1, 1_800_000_000_000)
    )
    await redis.xadd(
        RECEIPTS_STREAM, receipt("sent", event_id, order_id, 2, 1_800_000_001_000, "<m@a>")
    )
    await refuse_in_postgresql(pool, bad_id.decode())
    counting = CountingPool(pool)
    store.pool = cast(asyncpg.Pool, counting)
    consumer = ReceiptsConsumer(store, redis, consumer="orders-test", block_ms=10)
    assert await consumer.consume_once() == 2
    # The batch, refused whole; then each receipt on its own.
    assert counting.statements == 3
    assert await pool.fetchval("SELECT notification_status FROM orders") == "sent"
    kinds = [
        r["kind"] for r in await pool.fetch("SELECT kind FROM order_timeline ORDER BY at, seq")
    ]
    assert kinds == ["created", "sent"], "the refused receipt left no timeline row"
    pending: Any = await redis.xpending(RECEIPTS_STREAM, RECEIPTS_GROUP)
    assert int(pending["pending"]) == 0
    assert await redis.xlen(RECEIPTS_STREAM) == 0


async def test_a_publish_recorded_after_its_receipt_keeps_the_order_sent_and_its_stream_id(
    pool: asyncpg.Pool, redis: Redis
) -> None:
    """The fast path records its publishes a moment late (RECORD_LINGER_MS): the e-mail may be
    sent and its receipt applied first, so the outbox row is gone. The publish still gets its
    timeline entry (the stream id `acme trace` needs), and the order stays sent."""
    store, event_id, order_id = await one_order(pool)
    [event] = await store.lock_unpublished(pool, grace_ms=-1_000, limit=1)
    [published] = await publish_batch(redis, [event], dedupe_ttl_s=60)
    sent = receipt("sent", event_id, order_id, 1, uuid7_time_ms(uuid.UUID(order_id)) + 5_000)
    await apply_receipts(store, [("1-1", {k.encode(): v.encode() for k, v in sent.items()})])
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0

    await store.mark_published(pool, [published], via="fast-path")

    assert (await notification(pool))[0] == "sent"
    rows = await pool.fetch("SELECT kind, detail FROM order_timeline ORDER BY at, seq")
    assert [r["kind"] for r in rows] == ["created", "published", "sent"]
    assert rows[1]["detail"]["stream_id"] == published.stream_id


async def test_recording_a_publish_never_waits_for_rows_the_receipts_consumer_holds(
    pool: asyncpg.Pool, redis: Redis
) -> None:
    """The receipts consumer locks `orders` then `outbox`; the fast path's record would lock
    them the other way round, and the two deadlocked (a 1 s stall each at 500/s). The record
    skips rows another transaction holds: it returns at once and still writes the timeline."""
    store, _event_id, order_id = await one_order(pool)
    [event] = await store.lock_unpublished(pool, grace_ms=-1_000, limit=1)
    [published] = await publish_batch(redis, [event], dedupe_ttl_s=60)
    async with pool.acquire() as settling, settling.transaction():
        await settling.execute("SELECT 1 FROM orders WHERE id = $1 FOR UPDATE", order_id)
        await settling.execute("SELECT 1 FROM outbox WHERE order_id = $1 FOR UPDATE", order_id)
        async with asyncio.timeout(5):  # would wait for ever on the locks held above
            await store.mark_published(pool, [published], via="fast-path")
    kinds = [r["kind"] for r in await pool.fetch("SELECT kind FROM order_timeline ORDER BY at")]
    assert kinds == ["created", "published"]
    assert (await notification(pool))[0] == "pending", "the locked order was left to its holder"


async def test_receipts_of_several_shards_are_read_in_one_call_and_applied_together(
    pool: asyncpg.Pool, redis: Redis
) -> None:
    """On one Redis node one consumer serves every shard: the receipts of orders published on
    three shards are read by one XREADGROUP and applied by one statement; each shard's stream
    is emptied and its publish-once keys deleted, and the same stream id on two shards stays
    two receipts."""
    store = OrderStore(pool)
    await insert_orders(store, 3)
    rows = await pool.fetch("SELECT event_id, order_id FROM outbox ORDER BY event_id")
    on = shards(3)
    consumer = ReceiptsConsumer(store, redis, consumer="orders-test", block_ms=10, on=on)
    await consumer.ensure_groups()
    for index, row in enumerate(rows):
        event_id, order_id = str(row["event_id"]), str(row["order_id"])
        await redis.set(on[index].published_key(event_id), "1-1")
        fields = receipt("sent", event_id, order_id, 1, 1_800_000_000_000, "<m@acme>")
        await redis.xadd(on[index].receipts, fields, id="5-1")  # the same id on each shard
    await load_script("settle_receipts").ensure_loaded(redis)
    calls_before = await command_calls(redis, "xreadgroup")
    settles_before = await command_calls(redis, "evalsha")
    assert await consumer.consume_once() == 3
    assert await command_calls(redis, "xreadgroup") - calls_before == 2, "own pending, then new"
    assert await command_calls(redis, "evalsha") - settles_before == 3, "one settle per shard"
    transactions = await pool.fetchval(
        "SELECT count(DISTINCT xmin::text) FROM order_timeline WHERE kind = 'sent'"
    )
    assert transactions == 1, "the three receipts were applied by one statement"
    statuses = await pool.fetch("SELECT notification_status FROM orders")
    assert [r["notification_status"] for r in statuses] == ["sent"] * 3
    for index in range(3):
        assert await redis.xlen(on[index].receipts) == 0
        summary: Any = await redis.xpending(on[index].receipts, RECEIPTS_GROUP)
        assert summary["pending"] == 0, f"shard {index}'s receipt was deleted, not acknowledged"
        assert not await redis.exists(on[index].published_key(str(rows[index]["event_id"])))
    sources = await pool.fetch(
        "SELECT source_id FROM order_timeline WHERE kind = 'sent' ORDER BY source_id"
    )
    assert [r["source_id"] for r in sources] == ["1/5-1", "2/5-1", "5-1"]


async def command_calls(redis: Redis, command: str) -> int:
    stats: Any = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
