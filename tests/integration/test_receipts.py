"""The order service applies the notifier's receipts: status, attempts, timeline, outbox end."""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis

from acme_orders.receipts import ReceiptsConsumer
from acme_orders.store import OrderStore
from acme_runtime.channels import RECEIPTS_STREAM
from tests.integration.test_outbox import insert_orders


async def order_ids(pool: asyncpg.Pool) -> list[str]:
    return [str(r["order_id"]) for r in await pool.fetch("SELECT order_id FROM outbox")]


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


async def test_sent_receipt_marks_the_order_and_ends_the_outbox_row(
    pool: asyncpg.Pool, redis: Redis
) -> None:
    """After a failed try and a success, the order is sent after 2 attempts; outbox row gone."""
    store = OrderStore(pool)
    [event_id] = await insert_orders(store, 1)
    [order_id] = await order_ids(pool)
    consumer = ReceiptsConsumer(store, redis, consumer="orders-test", block_ms=10)
    await redis.xadd(
        RECEIPTS_STREAM,
        receipt("attempt_failed", str(event_id), order_id, 1, 1_800_000_000_000, "421 try later"),
    )
    await redis.xadd(
        RECEIPTS_STREAM, receipt("sent", str(event_id), order_id, 2, 1_800_000_005_000, "<m@acme>")
    )
    await consumer._ensure_group()
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
    from acme_orders.receipts import apply_receipts

    store = OrderStore(pool)
    [event_id] = await insert_orders(store, 1)
    [order_id] = await order_ids(pool)
    fields = {
        k.encode(): v.encode()
        for k, v in receipt("sent", str(event_id), order_id, 1, 1_800_000_000_000).items()
    }
    await apply_receipts(store, [("1-1", fields)])
    await apply_receipts(store, [("1-1", fields)])
    assert await pool.fetchval("SELECT count(*) FROM order_timeline WHERE kind = 'sent'") == 1


async def test_a_sent_order_never_turns_dead(pool: asyncpg.Pool, redis: Redis) -> None:
    """A late dead receipt after a sent one leaves the order sent."""
    from acme_orders.receipts import apply_receipts

    store = OrderStore(pool)
    [event_id] = await insert_orders(store, 1)
    [order_id] = await order_ids(pool)

    def raw(kind: str, source: str) -> tuple[str, dict[bytes, bytes]]:
        return source, {
            k.encode(): v.encode()
            for k, v in receipt(kind, str(event_id), order_id, 1, 1_800_000_000_000).items()
        }

    await apply_receipts(store, [raw("sent", "1-1")])
    await apply_receipts(store, [raw("dead", "1-2")])
    assert await pool.fetchval("SELECT notification_status FROM orders") == "sent"


async def test_malformed_receipts_are_skipped(pool: asyncpg.Pool) -> None:
    """A receipt with a bad id or type is logged and skipped, not fatal."""
    from acme_orders.receipts import apply_receipts

    applied = await apply_receipts(
        OrderStore(pool),
        [
            ("1-1", {b"type": b"sent", b"event_id": b"nope", b"order_id": b"x", b"at_ms": b"1"}),
            ("1-2", {b"type": b"exploded"}),
        ],
    )
    assert applied == 0
