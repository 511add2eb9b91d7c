"""The receipts consumer: the order service learns what happened to each e-mail.

Reads the notifier's receipts stream in its own consumer group and applies a batch in one
statement: `sent` and `dead` set the order's notification status and delete the outbox row
(which ends its re-drive); `attempt_failed` records the try; `held` (the recipient's hourly
cap reached: the e-mail waits, no try used) records the step, its reason as the detail. Each
timeline entry carries the receipt's stream id, so applying a receipt twice (after a crash, or
a claim of another replica's pending receipts) changes nothing. Receipts only move an order
forward: a sent order stays sent, a dead one may still turn sent, and an older receipt never
moves it back. Once a `sent` or `dead` receipt is applied, the event's publish-once key goes
too (ADR 0012): Redis keeps a key per event only while the event is in flight. Applied
receipts are settled (acknowledged, deleted, their keys unlinked) by one settle_receipts.lua
call per shard, every shard's in one pipeline.

Receipts this consumer has read but not applied (PostgreSQL failed mid-batch, or the process
restarted) stay in its own pending list; it reads that list again (`XREADGROUP … 0`) first,
at start and after every failure, so they are applied as soon as PostgreSQL answers.

With several shards (`ACME_STREAM_SHARDS`) on one Redis node one consumer reads every shard's
receipts stream in one call and applies what it read in one statement, as with one shard; on a
Redis Cluster (no read across slots) each shard has its own consumer actor. A receipt's
timeline entry carries its stream id qualified by its shard (`acme_runtime.channels.qualify`),
since stream ids are unique per stream only.

Receipts are not on the e-mail's critical path (the e-mail has already gone), so after a read
that did not fill a batch the consumer lingers `linger_ms` before the next one: at 200 orders/s
a 100 ms linger applies ~20 receipts per statement instead of one or two, which is most of the
relay's and a good part of PostgreSQL's CPU per order. Receipts a crashed replica left pending
are claimed every `claim_interval_ms`, not on every read.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from typing import Any, Final

import asyncpg
import structlog
from opentelemetry.trace import Span, SpanKind
from prometheus_client import Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from acme_orders.store import OrderStore
from acme_runtime.actors import sleep_or_stop
from acme_runtime.backoff import Backoff
from acme_runtime.channels import RECEIPTS_GROUP, Shard, qualify, shard
from acme_runtime.consumers import ensure_group, prune_consumers
from acme_runtime.lua import load_script
from acme_runtime.text import as_text
from acme_runtime.tracing import context_from_traceparent, tracer

__all__ = ["ReceiptsConsumer", "apply_receipts"]

log = structlog.get_logger(__name__)

Receipt = tuple[str, dict[bytes, bytes]]
#: A receipt as read: its shard, its id in that shard's stream, its fields.
_ShardReceipt = tuple[Shard, str, dict[bytes, bytes]]

SQL_APPLY_RECEIPTS = """
WITH r AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::uuid[], $5::bigint[],
                         $6::int[], $7::text[], $8::text[], $9::text[], $10::text[])
        AS r(source_id, kind, event_id, order_id, at_ms, attempts, consumer, reason_class,
             detail, provider)
),
-- A receipt's stream id is unique in the timeline: one applied before (a retry after a crash,
-- a claim of another replica's pending receipts) inserts no row here.
t AS (
    INSERT INTO order_timeline (order_id, at, kind, detail, source_id)
    SELECT r.order_id, to_timestamp(r.at_ms / 1000.0), r.kind,
           jsonb_strip_nulls(jsonb_build_object(
               'event_id', r.event_id, 'consumer', r.consumer,
               'reason_class', nullif(r.reason_class, ''), 'detail', nullif(r.detail, ''),
               'provider', nullif(r.provider, ''))),
           r.source_id
    FROM r
    -- Only for orders that exist: an id that is no order's (a hostile receipt's random UUID)
    -- may have no timeline partition to go to (docs/adr/0018-partitioned-tables.md).
    WHERE EXISTS (SELECT 1 FROM orders WHERE orders.id = r.order_id)
    ON CONFLICT (order_id, source_id) WHERE source_id IS NOT NULL DO NOTHING
    RETURNING source_id
),
-- The receipts applied now. Everything below reads these alone, so a receipt applied again
-- changes nothing at all: no status, detail, time or attempt.
applied AS (
    SELECT r.* FROM r JOIN t USING (source_id)
),
-- Real SMTP tries (a duplicate suppressed by the ledger and a dead letter for an exhausted
-- budget are not tries). They count whatever the order's state: a late try of a dead order
-- did happen.
tries AS (
    SELECT order_id, count(*) AS n FROM applied
    WHERE (kind IN ('attempt_failed', 'sent') AND reason_class IS DISTINCT FROM 'duplicate')
       OR (kind = 'dead' AND reason_class IS DISTINCT FROM 'max_deliveries')
    GROUP BY order_id
),
-- Per order, the receipt that speaks for the batch: sent over dead over attempt_failed/held; the
-- first sent (when the customer got the e-mail), else the latest (the last error).
final AS (
    SELECT DISTINCT ON (order_id)
           order_id, kind, to_timestamp(at_ms / 1000.0) AS at, nullif(detail, '') AS detail
    FROM applied
    ORDER BY order_id, (kind = 'sent') DESC, (kind = 'dead') DESC,
             CASE WHEN kind = 'sent' THEN -at_ms ELSE at_ms END DESC
),
-- Forward only: pending/published -> (attempt_failed keeps it there) -> sent | dead, and
-- dead -> sent (a replayed dead letter sent, or an e-mail that did go out). Sent is final: a
-- duplicate send keeps the first one's detail and time. The decision reads `orders` inside
-- the UPDATE, so a concurrent writer's row is re-read (READ COMMITTED), not a stale snapshot.
o AS (
    UPDATE orders SET
        notification_status = CASE
            WHEN orders.notification_status = 'sent' THEN 'sent'
            WHEN final.kind IN ('sent', 'dead') THEN final.kind
            ELSE orders.notification_status END,
        (notification_detail, notification_updated_at) = (
            SELECT CASE WHEN w.rewrites THEN final.detail ELSE orders.notification_detail END,
                   CASE WHEN w.rewrites
                        -- An older receipt never moves the time back.
                        THEN greatest(orders.notification_updated_at, final.at)
                        ELSE orders.notification_updated_at END
            FROM (SELECT CASE
                WHEN orders.notification_status = 'sent' THEN false
                WHEN final.kind = 'sent' THEN true
                WHEN orders.notification_status = 'dead'
                     AND final.kind IN ('attempt_failed', 'held') THEN false
                WHEN orders.notification_status <> 'dead' AND final.kind = 'dead' THEN true
                -- Staying put (another try's error; a replayed dead letter dead again): the
                -- newer receipt wins. With no error shown yet, any: `published` is stamped
                -- by PostgreSQL's clock, maybe just after the notifier's first try.
                ELSE orders.notification_detail IS NULL
                     OR final.at >= orders.notification_updated_at
                END) AS w(rewrites)),
        delivery_attempts = orders.delivery_attempts + coalesce(tries.n, 0)
    FROM final LEFT JOIN tries USING (order_id)
    WHERE orders.id = final.order_id
)
DELETE FROM outbox USING applied
WHERE outbox.event_id = applied.event_id AND applied.kind IN ('sent', 'dead')
"""


_SHARD_0: Final = shard(0)


def _receipt_span(fields: dict[bytes, bytes], stream: str) -> Span:
    """A consumer span in the order's own trace, when the receipt carries its context."""
    return tracer().start_span(
        f"process {stream}",
        context=context_from_traceparent(_field(fields, b"traceparent")),
        kind=SpanKind.CONSUMER,
        attributes={
            "messaging.system": "redis",
            "messaging.destination.name": stream,
            "messaging.operation.type": "process",
            "messaging.consumer.group.name": RECEIPTS_GROUP,
            "acme.receipt.type": _field(fields, b"type"),
        },
    )


#: Receipt timestamps past the year 9999, or attempts past int4, are malformed.
_MAX_AT_MS: Final = 253_402_300_799_999
_MAX_ATTEMPTS: Final = 2**31 - 1


def _field(fields: dict[bytes, bytes], name: bytes) -> str:
    # PostgreSQL text cannot hold NUL; a hostile SMTP reply copied into `detail` might.
    return fields.get(name, b"").decode("utf-8", "replace").replace("\x00", "")


async def apply_receipts(store: OrderStore, receipts: list[Receipt]) -> int:
    """Applies receipts in one statement; malformed ones are skipped (logged). Returns how many
    were applied. Each receipt's id is its `qualify`d stream id: unique across shards."""
    columns: list[list[object]] = [[] for _ in range(10)]
    for source_id, fields in receipts:
        try:
            row = (
                source_id,
                _field(fields, b"type"),
                _field(fields, b"event_id"),
                _field(fields, b"order_id"),
                int(_field(fields, b"at_ms")),
                int(_field(fields, b"attempts") or 0),
                _field(fields, b"consumer"),
                _field(fields, b"reason_class"),
                _field(fields, b"detail"),
                # The SMTP provider that accepted or refused; receipts of notifiers from before
                # the fallback provider existed have none.
                _field(fields, b"provider"),
            )
            if row[1] not in ("sent", "dead", "attempt_failed", "held"):
                raise ValueError(f"unknown receipt type {row[1]!r}")
            if not 0 <= int(row[4]) <= _MAX_AT_MS or not 0 <= int(row[5]) <= _MAX_ATTEMPTS:
                raise ValueError("at_ms or attempts out of range")
            uuid.UUID(str(row[2]))
            uuid.UUID(str(row[3]))
        except ValueError as exc:
            log.error("malformed_receipt_skipped", receipt_id=source_id, error=str(exc))
            continue
        for column, value in zip(columns, row, strict=True):
            column.append(value)
    if columns[0]:
        await store.pool.execute(SQL_APPLY_RECEIPTS, *columns)
    return len(columns[0])


def _finished_dedupe_keys(receipts: list[Receipt], on: Shard) -> list[str]:
    """The publish-once keys of events whose e-mail is now settled (sent or dead).

    Called only after the statement that deleted their outbox rows has committed: from then
    on no relay or re-drive can publish them again (a relay holding a row's lock made that
    DELETE wait for its commit), so the key has done its job and need not live out its TTL.
    """
    keys = []
    for _sid, fields in receipts:
        if fields.get(b"type") in (b"sent", b"dead"):
            with contextlib.suppress(ValueError):
                keys.append(on.published_key(str(uuid.UUID(_field(fields, b"event_id")))))
    return keys


class ReceiptsConsumer:
    name = "receipts"

    def __init__(
        self,
        store: OrderStore,
        redis: Redis,
        *,
        consumer: str,
        batch: int = 500,
        block_ms: int = 1_000,
        linger_ms: int = 100,
        claim_idle_ms: int = 30_000,
        claim_interval_ms: int = 5_000,
        applied: Counter | None = None,
        on: Shard | Sequence[Shard] = _SHARD_0,
    ) -> None:
        self._shards = (on,) if isinstance(on, Shard) else tuple(on)
        self._by_stream = {s.receipts: s for s in self._shards}
        first = self._shards[0]
        self.name = (
            "receipts" if len(self._shards) > 1 or first.index == 0 else (f"receipts-{first.index}")
        )
        self._applied = applied
        self._store = store
        self._redis = redis
        self._consumer = consumer
        self._batch = batch
        self._block_ms = block_ms
        self._linger_s = linger_ms / 1000
        self._claim_idle_ms = claim_idle_ms
        self._claim_interval_s = claim_interval_ms / 1000
        self._next_claim = 0.0
        # Own pending receipts first: at start (a restart) and after a failed batch.
        self._own_pending_first = True

    async def ensure_groups(self) -> None:
        """Creates each shard's receipts stream and group unless they exist: idempotent."""
        for on in self._shards:
            await ensure_group(self._redis, on.receipts, RECEIPTS_GROUP)

    async def _read(self) -> list[_ShardReceipt]:
        try:
            return await self._read_or_claim()
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost a stream and its group (restart without persistence, failover):
            # recreate it, or no receipt would ever be applied again.
            log.warning("receipts_group_vanished_recreating", group=RECEIPTS_GROUP)
            await self.ensure_groups()
            return []

    def _entries(self, reply: Any) -> list[_ShardReceipt]:
        """An XREADGROUP reply over our streams as (shard, stream id, fields)."""
        return [
            (self._by_stream[as_text(stream)], as_text(sid), fields)
            for stream, items in reply or []
            for sid, fields in items
        ]

    async def _read_own_pending(self) -> list[_ShardReceipt]:
        reply: Any = await self._redis.xreadgroup(
            RECEIPTS_GROUP,
            self._consumer,
            {on.receipts: "0" for on in self._shards},
            count=self._batch,
        )
        entries = self._entries(reply)
        gone = [(on, sid) for on, sid, fields in entries if not fields]
        for on in {on for on, _sid in gone}:
            # Deleted while pending: nothing to apply, only the pending entry to clear.
            await self._redis.xack(
                on.receipts, RECEIPTS_GROUP, *[sid for o, sid in gone if o == on]
            )
        return [(on, sid, fields) for on, sid, fields in entries if fields]

    async def _claim_stale(self) -> list[_ShardReceipt]:
        """What a crashed replica left pending for long, from time to time."""
        now = asyncio.get_running_loop().time()
        if now < self._next_claim:
            return []
        full = False
        for on in self._shards:
            autoclaimed: Any = await self._redis.xautoclaim(
                on.receipts,
                RECEIPTS_GROUP,
                self._consumer,
                self._claim_idle_ms,
                start_id="0-0",
                count=self._batch,
            )
            claimed = autoclaimed[1]
            full |= len(claimed) >= self._batch
            if claimed:
                # A full batch: go on claiming; otherwise look again later.
                if not full:
                    self._next_claim = now + self._claim_interval_s
                return [(on, as_text(sid), fields) for sid, fields in claimed if fields]
        self._next_claim = now + self._claim_interval_s
        return []

    async def _read_or_claim(self) -> list[_ShardReceipt]:
        if self._own_pending_first:
            own = await self._read_own_pending()
            if own:
                return own
            self._own_pending_first = False
        if claimed := await self._claim_stale():
            return claimed
        # Every shard's new receipts in one call (one Redis node; on a cluster a consumer
        # serves one shard).
        reply: Any = await self._redis.xreadgroup(
            RECEIPTS_GROUP,
            self._consumer,
            {on.receipts: ">" for on in self._shards},
            count=self._batch,
            block=self._block_ms,
        )
        return [(on, sid, fields) for on, sid, fields in self._entries(reply) if fields]

    async def consume_once(self) -> int:
        entries = await self._read()
        if not entries:
            return 0
        receipts = [(qualify(on.index, sid), fields) for on, sid, fields in entries]
        spans = [_receipt_span(fields, on.receipts) for on, _sid, fields in entries]
        try:
            try:
                await apply_receipts(self._store, receipts)
            except asyncpg.DataError:
                # A value PostgreSQL refuses would fail this batch on every retry and hold up
                # every receipt behind it: apply one by one and skip what cannot be applied.
                await self._apply_one_by_one(receipts)
        finally:
            for span in spans:
                span.end()
        if self._applied is not None:
            for _sid, fields in receipts:
                self._applied.labels(_field(fields, b"type") or "unknown").inc()
        await self._settle(entries)
        return len(entries)

    async def _settle(self, entries: list[_ShardReceipt]) -> None:
        """Acknowledges and deletes applied receipts and unlinks the publish-once keys they
        finished: one settle_receipts.lua call per shard, every shard's in one pipeline."""
        calls: list[tuple[list[str], list[str]]] = []
        for on in self._shards:
            mine = [(sid, fields) for o, sid, fields in entries if o == on]
            if mine:
                keys = [on.receipts, *_finished_dedupe_keys(mine, on)]
                calls.append((keys, [RECEIPTS_GROUP, *(sid for sid, _f in mine)]))
        await load_script("settle_receipts").run_many(self._redis, calls)

    async def _apply_one_by_one(self, receipts: list[Receipt]) -> None:
        for receipt in receipts:
            try:
                await apply_receipts(self._store, [receipt])
            except asyncpg.DataError as exc:
                log.error("malformed_receipt_skipped", receipt_id=receipt[0], error=repr(exc))

    async def run(self, stop: asyncio.Event) -> None:
        await self.ensure_groups()
        backoff = Backoff(first_s=0.1, max_s=5.0)
        next_prune = 0.0
        while not stop.is_set():
            try:
                read = await self.consume_once()
                backoff.reset()
                if 0 < read < self._batch and self._linger_s > 0:
                    # Let the next batch gather; a full batch means a backlog: no pause.
                    await sleep_or_stop(stop, self._linger_s)
                if asyncio.get_running_loop().time() >= next_prune:
                    next_prune = asyncio.get_running_loop().time() + 60
                    for on in self._shards:
                        await prune_consumers(
                            self._redis,
                            on.receipts,
                            RECEIPTS_GROUP,
                            min_idle_ms=3_600_000,
                            keep=self._consumer,
                        )
            except (
                RedisError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                OSError,
                TimeoutError,
            ) as exc:
                # What was read stays pending with us: retry it before reading anything new.
                self._own_pending_first = True
                delay_s = backoff.next_s()
                log.warning("receipts_failed", error=repr(exc), retry_in_s=delay_s)
                await sleep_or_stop(stop, delay_s)
        for on in self._shards:
            with contextlib.suppress(RedisError, OSError):
                await prune_consumers(
                    self._redis, on.receipts, RECEIPTS_GROUP, min_idle_ms=0, only=self._consumer
                )
