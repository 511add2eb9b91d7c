"""PostgreSQL access of the order service: every SQL statement it runs lives here.

Writing an order is ONE statement (data-modifying CTEs): idempotency key, order, items, outbox
row and the first timeline entry commit together or not at all, in a single round trip. That is
both the transactional outbox's guarantee and most of the intake throughput.

The timeline is partitioned by order id and its old partitions dropped whole (the janitor;
docs/adr/0018-partitioned-tables.md). The outbox stays a plain table emptied by DELETE (the
receipts consumer, once an e-mail is sent or dead): a row lives seconds, so the table only ever
holds the in-flight backlog, and a small hot table's dead tuples are vacuumed as fast as they
come; partitions would drop nothing that a DELETE has not already removed.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from acme_orders.domain import OrderDraft
from acme_runtime.migrate import Migration, discover

__all__ = [
    "TIMELINE_TABLE",
    "Created",
    "IdempotencyMismatch",
    "OrderStore",
    "OutboxEvent",
    "Replayed",
    "migrations",
    "request_hash",
]

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: RANGE-partitioned by order_id (a UUIDv7): the janitor creates and drops its partitions.
TIMELINE_TABLE = "order_timeline"

#: Anything that runs a statement: a pooled connection inside a transaction, or the pool.
Executor = asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool
Conn = asyncpg.Connection | PoolConnectionProxy


def migrations() -> list[Migration]:
    return discover("orders", MIGRATIONS_DIR)


def request_hash(draft: OrderDraft) -> bytes:
    """A fingerprint of what was ordered, independent of JSON whitespace and key order."""
    return hashlib.sha256(msgspec.json.encode(draft)).digest()


@dataclass(frozen=True)
class Created:
    order_id: uuid.UUID


@dataclass(frozen=True)
class Replayed:
    """The Idempotency-Key was seen before with the same request: this is its order."""

    order_id: uuid.UUID


@dataclass(frozen=True)
class IdempotencyMismatch:
    """The Idempotency-Key was seen before with a different request."""

    order_id: uuid.UUID


@dataclass(frozen=True)
class OutboxEvent:
    event_id: uuid.UUID
    order_id: uuid.UUID
    envelope: bytes
    traceparent: str | None = None


_INSERT_ORDER = """
WITH k AS ({key_cte}),
o AS (
    INSERT INTO orders (id, customer_name, customer_email, locale, currency, total, created_at,
                        trace_id, api_key_id)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $17 FROM k
    RETURNING id
),
i AS (
    INSERT INTO order_items (order_id, line_no, sku, name, quantity, unit_price, line_total)
    SELECT o.id, t.line_no, t.sku, t.name, t.quantity, t.unit_price, t.line_total
    FROM o, unnest($9::text[], $10::text[], $11::int[], $12::numeric[], $13::numeric[])
        WITH ORDINALITY AS t(sku, name, quantity, unit_price, line_total, line_no)
),
x AS (
    INSERT INTO outbox (event_id, order_id, envelope, created_at, traceparent)
    SELECT $14, o.id, $15, $7, $16 FROM o
),
tl AS (
    INSERT INTO order_timeline (order_id, at, kind, detail)
    SELECT o.id, $7, 'created', jsonb_build_object('event_id', $14::text) FROM o
)
SELECT id FROM o
"""
_KEY_NONE = "SELECT 1"
_KEY_INSERT = """
    INSERT INTO idempotency_keys (key, request_hash, order_id, created_at)
    VALUES ($18, $19, $1, $7)
    ON CONFLICT (key) DO NOTHING
    RETURNING 1
"""
SQL_INSERT_ORDER = _INSERT_ORDER.format(key_cte=_KEY_NONE)
SQL_INSERT_ORDER_WITH_KEY = _INSERT_ORDER.format(key_cte=_KEY_INSERT)

SQL_MARK_PUBLISHED = """
WITH u AS (
    UPDATE outbox
    SET published_at = coalesce(published_at, now()),
        last_published_at = now(),
        stream_id = coalesce(outbox.stream_id, x.stream_id),
        publish_count = publish_count + x.added::int
    FROM unnest($1::uuid[], $2::text[], $3::bool[]) AS x(event_id, stream_id, added)
    WHERE outbox.event_id = x.event_id
    RETURNING outbox.order_id, x.stream_id, x.added, outbox.publish_count
),
s AS (
    UPDATE orders SET notification_status = 'published', notification_updated_at = now()
    FROM u
    WHERE orders.id = u.order_id AND orders.notification_status = 'pending'
)
INSERT INTO order_timeline (order_id, at, kind, detail)
-- Stamped with the XADD time the stream id carries, not with when the row was updated: the
-- notifier may well have sent the e-mail in between.
SELECT u.order_id, to_timestamp(split_part(u.stream_id, '-', 1)::bigint / 1000.0),
       CASE WHEN u.publish_count > 1 THEN 'redriven' ELSE 'published' END,
       jsonb_build_object('stream_id', u.stream_id, 'via', $4::text)
FROM u WHERE u.added
"""


def _outbox_event(row: asyncpg.Record) -> OutboxEvent:
    return OutboxEvent(row["event_id"], row["order_id"], bytes(row["envelope"]), row["traceparent"])


class OrderStore:
    """The order service's tables, over an asyncpg pool built by the composition root."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create_order(
        self,
        *,
        order_id: uuid.UUID,
        event_id: uuid.UUID,
        draft: OrderDraft,
        created_at: datetime,
        envelope: bytes,
        trace_id: str | None,
        idempotency_key: str | None,
        traceparent: str | None = None,
        api_key_id: str | None = None,
    ) -> Created | Replayed | IdempotencyMismatch:
        items = draft.items
        args: list[Any] = [
            order_id,
            draft.customer.name,
            draft.customer.email,
            draft.customer.locale,
            draft.currency,
            draft.total,
            created_at,
            trace_id,
            [i.sku for i in items],
            [i.name for i in items],
            [i.quantity for i in items],
            [i.unit_price for i in items],
            [i.line_total for i in items],
            event_id,
            envelope,
            traceparent,
            api_key_id,
        ]
        if idempotency_key is None:
            await self.pool.fetchval(SQL_INSERT_ORDER, *args)
            return Created(order_id)
        fingerprint = request_hash(draft)
        inserted = await self.pool.fetchval(
            SQL_INSERT_ORDER_WITH_KEY, *args, idempotency_key, fingerprint
        )
        if inserted is not None:
            return Created(order_id)
        row = await self.pool.fetchrow(
            "SELECT order_id, request_hash FROM idempotency_keys WHERE key = $1", idempotency_key
        )
        if row is None:  # expired between the two statements: a fresh order is right
            return await self.create_order(
                order_id=order_id,
                event_id=event_id,
                draft=draft,
                created_at=created_at,
                envelope=envelope,
                trace_id=trace_id,
                idempotency_key=idempotency_key,
                traceparent=traceparent,
                api_key_id=api_key_id,
            )
        if bytes(row["request_hash"]) != fingerprint:
            return IdempotencyMismatch(row["order_id"])
        return Replayed(row["order_id"])

    async def schema_is_current(self) -> bool:
        """True once every migration of this service is applied (not before `acme migrate`)."""
        expected = [migration.version for migration in migrations()]
        applied: int = await self.pool.fetchval(
            "SELECT count(*) FROM schema_migrations WHERE service = 'orders'"
            " AND version = ANY($1::text[])",
            expected,
            timeout=1,
        )
        return applied == len(expected)

    async def get_order(self, order_id: uuid.UUID) -> dict[str, Any] | None:
        """The order with its items, notification status and timeline, or None."""
        async with self.pool.acquire() as conn:
            order = await conn.fetchrow("SELECT * FROM orders WHERE id = $1", order_id)
            if order is None:
                return None
            items = await conn.fetch(
                "SELECT sku, name, quantity, unit_price, line_total FROM order_items"
                " WHERE order_id = $1 ORDER BY line_no",
                order_id,
            )
            timeline = await conn.fetch(
                "SELECT at, kind, detail FROM order_timeline WHERE order_id = $1 ORDER BY at, seq",
                order_id,
            )
            outbox = await conn.fetchrow(
                "SELECT event_id, published_at, stream_id, publish_count FROM outbox"
                " WHERE order_id = $1",
                order_id,
            )
        return {
            "order": dict(order),
            "items": [dict(item) for item in items],
            "timeline": [dict(entry) for entry in timeline],
            "outbox": None if outbox is None else dict(outbox),
        }

    async def mark_published(
        self,
        conn: Executor,
        results: Sequence[tuple[uuid.UUID, str, bool]],
        via: str,
    ) -> None:
        """Records (event_id, stream_id, added) publish results and their timeline entries."""
        if not results:
            return
        await conn.execute(
            SQL_MARK_PUBLISHED,
            [r[0] for r in results],
            [r[1] for r in results],
            [r[2] for r in results],
            via,
        )

    async def lock_unpublished(self, conn: Conn, grace_ms: int, limit: int) -> list[OutboxEvent]:
        """Locks (SKIP LOCKED) events the fast path has not published within `grace_ms`."""
        rows = await conn.fetch(
            "SELECT event_id, order_id, envelope, traceparent FROM outbox"
            " WHERE published_at IS NULL AND created_at < now() - make_interval(secs => $1)"
            " ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            grace_ms / 1000.0,
            limit,
        )
        return [_outbox_event(r) for r in rows]

    async def lock_unconfirmed(
        self, conn: Conn, older_than_s: int, limit: int
    ) -> list[OutboxEvent]:
        """Locks published events with no receipt for `older_than_s`: candidates for re-drive."""
        rows = await conn.fetch(
            "SELECT event_id, order_id, envelope, traceparent FROM outbox"
            " WHERE published_at IS NOT NULL"
            " AND last_published_at < now() - make_interval(secs => $1)"
            " ORDER BY last_published_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            float(older_than_s),
            limit,
        )
        return [_outbox_event(r) for r in rows]

    async def delete_expired_keys(self, ttl_s: int, limit: int = 5_000) -> int:
        """Deletes up to `limit` idempotency keys older than `ttl_s`; returns how many.

        A DELETE, not partitions: keys are only written for requests that carry one, live a
        day, and go in batches that each hold their locks for milliseconds; autovacuum keeps
        up with that, and a partition per day would buy little (docs/adr/0018)."""
        result: str = await self.pool.execute(
            "DELETE FROM idempotency_keys WHERE key IN ("
            " SELECT key FROM idempotency_keys"
            " WHERE created_at < now() - make_interval(secs => $1) LIMIT $2)",
            float(ttl_s),
            limit,
        )
        return int(result.split()[-1])

    async def outbox_backlog(self) -> dict[str, Any]:
        """Unpublished and unconfirmed outbox rows, with the age of the oldest of each."""
        row = await self.pool.fetchrow(
            "SELECT"
            " count(*) FILTER (WHERE published_at IS NULL) AS unpublished,"
            " count(*) FILTER (WHERE published_at IS NOT NULL) AS unconfirmed,"
            " extract(epoch FROM now() - min(created_at) FILTER (WHERE published_at IS NULL))"
            "   AS oldest_unpublished_s,"
            " extract(epoch FROM now() - min(created_at)) AS oldest_unconfirmed_s"
            " FROM outbox"
        )
        return dict(row) if row is not None else {}
