"""The send ledger: which events' e-mails an SMTP server has already accepted.

Lives in PostgreSQL (schema `notify`), so a Redis that loses its data and an outbox re-drive
that puts an event back on the stream cannot cause a second e-mail. The one duplicate window
left is between the server's 250 and `record_sent` committing: a crash exactly there resends.
`record_sent` is called right after the 250, before anything else, to keep that window to one
round trip.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import asyncpg

from acme_runtime.migrate import Migration, discover

__all__ = ["SendLedger", "migrations"]


def migrations() -> list[Migration]:
    return discover("notify", Path(__file__).parent / "migrations")


class SendLedger:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def already_sent(self, event_id: str) -> str | None:
        """The Message-ID of the e-mail already sent for `event_id`, or None."""
        message_id: str | None = await self._pool.fetchval(
            "SELECT message_id FROM notify.sent_ledger WHERE event_id = $1", uuid.UUID(event_id)
        )
        return message_id

    async def record_sent(
        self,
        *,
        event_id: str,
        order_id: str,
        message_id: str,
        smtp_reply: str,
        consumer: str,
        deliveries: int,
    ) -> None:
        await self._pool.execute(
            "INSERT INTO notify.sent_ledger"
            " (event_id, order_id, message_id, smtp_reply, consumer, deliveries)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (event_id) DO NOTHING",
            uuid.UUID(event_id),
            uuid.UUID(order_id),
            message_id,
            smtp_reply[:500],
            consumer,
            deliveries,
        )

    async def delete_older_than(self, retention_s: int, limit: int = 5_000) -> int:
        result: str = await self._pool.execute(
            "DELETE FROM notify.sent_ledger WHERE event_id IN ("
            " SELECT event_id FROM notify.sent_ledger"
            " WHERE sent_at < now() - make_interval(secs => $1) LIMIT $2)",
            float(retention_s),
            limit,
        )
        return int(result.split()[-1])
