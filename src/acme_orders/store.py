"""PostgreSQL access of the order service: every SQL statement it runs lives here.

Writing orders is ONE statement (data-modifying CTEs over column arrays): each order's
idempotency key, the order, its items, outbox row and first timeline entry commit together or
not at all, in a single round trip, for a whole batch of orders at once (the API's group commit,
acme_orders.group_commit). That is both the transactional outbox's guarantee and most of the
intake throughput.

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
from typing import Any, NamedTuple

import asyncpg
import msgspec
from asyncpg.pool import PoolConnectionProxy

from acme_orders.domain import OrderDraft
from acme_runtime.migrate import Migration, discover

__all__ = [
    "TIMELINE_TABLE",
    "Created",
    "IdempotencyMismatch",
    "NewOrder",
    "OrderStore",
    "OutboxEvent",
    "Published",
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


@dataclass(frozen=True, slots=True, kw_only=True)
class NewOrder:
    """An order to write, with its outbox event: one row of a group commit."""

    order_id: uuid.UUID
    event_id: uuid.UUID
    draft: OrderDraft
    created_at: datetime
    envelope: bytes
    trace_id: str | None
    idempotency_key: str | None
    traceparent: str | None = None
    api_key_id: str | None = None


class Published(NamedTuple):
    """An event's publish: its stream entry, and whether this publish added it."""

    event_id: uuid.UUID
    order_id: uuid.UUID
    stream_id: str
    added: bool
    #: The shard whose stream holds it.
    shard: int = 0


@dataclass(frozen=True)
class OutboxEvent:
    event_id: uuid.UUID
    order_id: uuid.UUID
    envelope: bytes
    traceparent: str | None = None
    #: The shard it was first published on; None until then (it goes to its order's shard).
    shard: int | None = None


#: Writes a batch of orders in ONE statement (group commit, acme_orders.group_commit): their
#: idempotency keys, the orders, their items, outbox rows and first timeline entries. An order
#: whose Idempotency-Key is already taken (by an earlier request, or by another order of the same
#: batch) writes nothing; its id is missing from what the statement returns, and the caller
#: looks the key up. Parameters are column arrays, one element per order ($1-$14) or per item
#: ($15-$21, each item naming its order), so the statement's text never varies with the batch.
SQL_INSERT_ORDERS = """
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::numeric[], $7::timestamptz[], $8::text[], $9::text[], $10::uuid[],
                         $11::bytea[], $12::text[], $13::text[], $14::bytea[])
        AS t(id, customer_name, customer_email, locale, currency, total, created_at, trace_id,
             api_key_id, event_id, envelope, traceparent, idempotency_key, request_hash)
),
k AS (
    INSERT INTO idempotency_keys (key, request_hash, order_id, created_at)
    SELECT idempotency_key, request_hash, id, created_at FROM input
    WHERE idempotency_key IS NOT NULL
    ON CONFLICT (key) DO NOTHING
    RETURNING order_id
),
o AS (
    INSERT INTO orders (id, customer_name, customer_email, locale, currency, total, created_at,
                        trace_id, api_key_id)
    SELECT id, customer_name, customer_email, locale, currency, total, created_at, trace_id,
           api_key_id
    FROM input WHERE idempotency_key IS NULL OR id IN (SELECT order_id FROM k)
    RETURNING id
),
i AS (
    INSERT INTO order_items (order_id, line_no, sku, name, quantity, unit_price, line_total)
    SELECT t.order_id, t.line_no, t.sku, t.name, t.quantity, t.unit_price, t.line_total
    FROM unnest($15::uuid[], $16::int[], $17::text[], $18::text[], $19::int[], $20::numeric[],
                $21::numeric[])
        AS t(order_id, line_no, sku, name, quantity, unit_price, line_total)
    WHERE t.order_id IN (SELECT id FROM o)
),
x AS (
    INSERT INTO outbox (event_id, order_id, envelope, created_at, traceparent)
    SELECT input.event_id, input.id, input.envelope, input.created_at, input.traceparent
    FROM input JOIN o ON o.id = input.id
),
tl AS (
    INSERT INTO order_timeline (order_id, at, kind, detail)
    SELECT input.id, input.created_at, 'created',
           jsonb_build_object('event_id', input.event_id::text)
    FROM input JOIN o ON o.id = input.id
)
SELECT id FROM o
"""

#: Records publish results. The fast path records them a moment after publishing (it gathers
#: them: acme_orders.publisher), so the e-mail may be sent and its receipt applied first: the
#: outbox row is then gone and the order already `sent`. The timeline entry is written all the
#: same (from the results, not from the row), and the order's status only moves forward.
#: Rows the receipts consumer holds locked are skipped, never waited for: that consumer is
#: settling them (the order becomes `sent`, the outbox row goes), and waiting would let the two
#: statements, which lock `orders` and `outbox` rows in different orders, deadlock (measured at
#: 500 orders/s: a 1 s stall of the fast path per deadlock). Should its transaction fail, the
#: row simply stays unrecorded: the relay publishes it again after its grace (a no-op, by
#: publish_once) and records it then.
SQL_MARK_PUBLISHED = """
WITH x AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::bool[], $6::smallint[])
        AS x(event_id, order_id, stream_id, added, shard)
),
ob AS (
    SELECT outbox.event_id FROM outbox JOIN x USING (event_id)
    FOR UPDATE OF outbox SKIP LOCKED
),
u AS (
    UPDATE outbox
    SET published_at = coalesce(published_at, now()),
        last_published_at = now(),
        stream_id = coalesce(outbox.stream_id, x.stream_id),
        shard = coalesce(outbox.shard, x.shard),
        publish_count = publish_count + x.added::int
    FROM x JOIN ob USING (event_id)
    WHERE outbox.event_id = x.event_id
    RETURNING outbox.event_id, outbox.publish_count
),
od AS (
    SELECT orders.id FROM orders JOIN x ON orders.id = x.order_id
    WHERE orders.notification_status = 'pending'
    FOR UPDATE OF orders SKIP LOCKED
),
s AS (
    UPDATE orders SET notification_status = 'published', notification_updated_at = now()
    FROM od
    WHERE orders.id = od.id AND orders.notification_status = 'pending'
)
INSERT INTO order_timeline (order_id, at, kind, detail)
-- Stamped with the XADD time the stream id carries, not with when the row was updated: the
-- notifier may well have sent the e-mail in between.
SELECT x.order_id, to_timestamp(split_part(x.stream_id, '-', 1)::bigint / 1000.0),
       CASE WHEN u.publish_count > 1 THEN 'redriven' ELSE 'published' END,
       jsonb_build_object('stream_id', x.stream_id, 'via', $5::text, 'shard', x.shard)
FROM x LEFT JOIN u ON u.event_id = x.event_id WHERE x.added
"""


def _outbox_event(row: asyncpg.Record) -> OutboxEvent:
    return OutboxEvent(
        row["event_id"],
        row["order_id"],
        bytes(row["envelope"]),
        row["traceparent"],
        row["shard"],
    )


class OrderStore:
    """The order service's tables, over an asyncpg pool built by the composition root."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def create_order(self, order: NewOrder) -> Created | Replayed | IdempotencyMismatch:
        """Writes one order on its own (the API coalesces them: acme_orders.group_commit)."""
        while True:
            if order.order_id in await self.insert_orders(self.pool, [order]):
                return Created(order.order_id)
            outcome = await self.resolve_key(order)
            if outcome is not None:
                return outcome

    async def insert_orders(self, conn: Executor, orders: Sequence[NewOrder]) -> set[uuid.UUID]:
        """Writes `orders` in one statement; the ids of those written. The others' keys were
        already taken: `resolve_key` says by what."""
        if not orders:
            return set()
        order_rows = [
            (
                order.order_id,
                order.draft.customer.name,
                order.draft.customer.email,
                order.draft.customer.locale,
                order.draft.currency,
                order.draft.total,
                order.created_at,
                order.trace_id,
                order.api_key_id,
                order.event_id,
                order.envelope,
                order.traceparent,
                order.idempotency_key,
                None if order.idempotency_key is None else request_hash(order.draft),
            )
            for order in orders
        ]
        item_rows = [
            (order.order_id, line_no, i.sku, i.name, i.quantity, i.unit_price, i.line_total)
            for order in orders
            for line_no, i in enumerate(order.draft.items, start=1)
        ]
        # Rows to columns: one array parameter per column ($1-$14 orders, $15-$21 items).
        columns = [list(column) for column in zip(*order_rows, strict=True)]
        columns += [list(column) for column in zip(*item_rows, strict=True)] or [[]] * 7
        rows = await conn.fetch(SQL_INSERT_ORDERS, *columns)
        return {row[0] for row in rows}

    async def resolve_key(self, order: NewOrder) -> Replayed | IdempotencyMismatch | None:
        """What took the Idempotency-Key of an order that was not written: the same request
        before (Replayed), another one (IdempotencyMismatch), or nothing any more (None: the
        key expired in between, so writing the order again is right)."""
        row = await self.pool.fetchrow(
            "SELECT order_id, request_hash FROM idempotency_keys WHERE key = $1",
            order.idempotency_key,
        )
        if row is None:
            return None
        if bytes(row["request_hash"]) != request_hash(order.draft):
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
        self, conn: Executor, published: Sequence[Published], via: str
    ) -> None:
        """Records publish results and their timeline entries."""
        if not published:
            return
        await conn.execute(
            SQL_MARK_PUBLISHED,
            [p.event_id for p in published],
            [p.order_id for p in published],
            [p.stream_id for p in published],
            [p.added for p in published],
            via,
            [p.shard for p in published],
        )

    async def lock_unpublished(self, conn: Conn, grace_ms: int, limit: int) -> list[OutboxEvent]:
        """Locks (SKIP LOCKED) events the fast path has not published within `grace_ms`."""
        rows = await conn.fetch(
            "SELECT event_id, order_id, envelope, traceparent, shard FROM outbox"
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
            "SELECT event_id, order_id, envelope, traceparent, shard FROM outbox"
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
