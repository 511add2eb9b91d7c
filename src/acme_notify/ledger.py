"""The send ledger: which events' e-mails an SMTP server has already accepted.

Lives in PostgreSQL (schema `notify`), so a Redis that loses its data and an outbox re-drive
that puts an event back on the stream cannot cause a second e-mail. The one duplicate window
left is between the server's 250 and `record_sent` committing: a crash exactly there resends.
`record_sent` is called right after the 250, before anything else, to keep that window to one
round trip.

Look-ups and inserts made by concurrent sends in the same event-loop turn are coalesced into one
statement each (`acme_runtime.coalesce`): a busy notifier pays one round trip per batch, not per
e-mail, and every caller still returns only once its own row is committed.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Final, NamedTuple

import asyncpg

from acme_runtime.coalesce import Coalescer
from acme_runtime.migrate import Migration, discover

__all__ = ["SendLedger", "migrations"]


def migrations() -> list[Migration]:
    return discover("notify", Path(__file__).parent / "migrations")


#: Longest SMTP reply kept (the column holds what the server said, for `acme trace`).
SMTP_REPLY_MAX_CHARS: Final = 500

_SQL_LOOKUP: Final = (
    "SELECT event_id, message_id FROM notify.sent_ledger WHERE event_id = ANY($1::uuid[])"
)
_SQL_RECORD: Final = """
INSERT INTO notify.sent_ledger (event_id, order_id, message_id, smtp_reply, consumer, deliveries)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int[])
ON CONFLICT (event_id) DO NOTHING
"""


class _Sent(NamedTuple):
    event_id: uuid.UUID
    order_id: uuid.UUID
    message_id: str
    smtp_reply: str
    consumer: str
    deliveries: int


class SendLedger:
    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 256) -> None:
        self._pool = pool
        self._lookups = Coalescer(self._lookup_batch, max_batch=max_batch)
        self._records = Coalescer(self._record_batch, max_batch=max_batch)

    async def already_sent(self, event_id: str) -> str | None:
        """The Message-ID of the e-mail already sent for `event_id`, or None."""
        return await self._lookups(uuid.UUID(event_id))

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
        """Records an accepted e-mail; returns once the row is committed (first one wins)."""
        await self._records(
            _Sent(
                uuid.UUID(event_id),
                uuid.UUID(order_id),
                message_id,
                smtp_reply[:SMTP_REPLY_MAX_CHARS],
                consumer,
                deliveries,
            )
        )

    async def _lookup_batch(self, event_ids: Sequence[uuid.UUID]) -> list[str | None]:
        rows = await self._pool.fetch(_SQL_LOOKUP, list(event_ids))
        found: dict[uuid.UUID, str] = {row["event_id"]: row["message_id"] for row in rows}
        return [found.get(event_id) for event_id in event_ids]

    async def _record_batch(self, records: Sequence[_Sent]) -> list[None]:
        # One column per array: unnest() zips them back into rows.
        columns = list(zip(*records, strict=True))
        await self._pool.execute(_SQL_RECORD, *(list(column) for column in columns))
        return [None] * len(records)

    async def delete_older_than(self, retention_s: int, limit: int = 5_000) -> int:
        result: str = await self._pool.execute(
            "DELETE FROM notify.sent_ledger WHERE event_id IN ("
            " SELECT event_id FROM notify.sent_ledger"
            " WHERE sent_at < now() - make_interval(secs => $1) LIMIT $2)",
            float(retention_s),
            limit,
        )
        return int(result.split()[-1])
