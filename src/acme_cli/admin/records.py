"""What the admin commands read from PostgreSQL: orders, the outbox and the send ledger.

Read-only. The order's record and the outbox backlog come through the order service's own
`OrderStore`; the ledger queries read the notifier's `notify.sent_ledger` directly, which is
fair for an operator tool that sits above both services.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from acme_orders.store import OrderStore

__all__ = [
    "LedgerRow",
    "OutboxStats",
    "ledger_rows",
    "order_record",
    "outbox_shard",
    "outbox_stats",
    "sent_since",
]


class OutboxStats(msgspec.Struct, frozen=True, kw_only=True):
    #: Committed orders whose event is not on the stream yet.
    unpublished: int
    #: Published events with no sent/dead receipt yet (re-driven after a while).
    unconfirmed: int
    oldest_unpublished_s: float | None
    oldest_unconfirmed_s: float | None


class LedgerRow(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    order_id: str
    message_id: str
    sent_at: datetime
    smtp_reply: str
    consumer: str
    deliveries: int
    provider: str


def _seconds(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


async def outbox_stats(pool: asyncpg.Pool) -> OutboxStats:
    backlog = await OrderStore(pool).outbox_backlog()
    return OutboxStats(
        unpublished=int(backlog.get("unpublished") or 0),
        unconfirmed=int(backlog.get("unconfirmed") or 0),
        oldest_unpublished_s=_seconds(backlog.get("oldest_unpublished_s")),
        oldest_unconfirmed_s=_seconds(backlog.get("oldest_unconfirmed_s")),
    )


async def sent_since(pool: asyncpg.Pool, seconds: float) -> int:
    """E-mails the SMTP server accepted in the last `seconds` (ledger rows, index on sent_at)."""
    count: int = await pool.fetchval(
        "SELECT count(*) FROM notify.sent_ledger WHERE sent_at > now() - make_interval(secs => $1)",
        seconds,
    )
    return count


async def ledger_rows(pool: asyncpg.Pool, event_ids: Collection[str]) -> list[LedgerRow]:
    if not event_ids:
        return []
    rows = await pool.fetch(
        "SELECT event_id, order_id, message_id, sent_at, smtp_reply, consumer, deliveries,"
        " provider FROM notify.sent_ledger WHERE event_id = ANY($1::uuid[]) ORDER BY sent_at",
        [uuid.UUID(e) for e in event_ids],
    )
    return [
        LedgerRow(
            event_id=str(r["event_id"]),
            order_id=str(r["order_id"]),
            message_id=r["message_id"],
            sent_at=r["sent_at"],
            smtp_reply=r["smtp_reply"],
            consumer=r["consumer"],
            deliveries=r["deliveries"],
            provider=r["provider"],
        )
        for r in rows
    ]


async def order_record(pool: asyncpg.Pool, order_id: uuid.UUID) -> dict[str, Any] | None:
    """The order, its items, timeline and outbox row (OrderStore.get_order), or None."""
    return await OrderStore(pool).get_order(order_id)


async def outbox_shard(pool: asyncpg.Pool, order_id: uuid.UUID) -> int | None:
    """The shard the order's event was published on, while its outbox row lives; else None."""
    value: int | None = await pool.fetchval(
        "SELECT shard FROM outbox WHERE order_id = $1 AND shard IS NOT NULL LIMIT 1", order_id
    )
    return value
