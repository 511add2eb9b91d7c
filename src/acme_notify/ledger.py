"""The send ledger: which events' e-mails an SMTP server has already accepted.

Lives in PostgreSQL (schema `notify`), so a Redis that loses its data and an outbox re-drive
that puts an event back on the stream cannot cause a second e-mail. The one duplicate window
left is between the server's 250 and `record_sent` committing: a crash exactly there resends.
`record_sent` is called right after the 250, before anything else, to keep that window to one
round trip.

Look-ups and inserts made by concurrent sends in the same event-loop turn are coalesced into one
statement each (`acme_runtime.coalesce`): a busy notifier pays one round trip per batch, not per
e-mail, and every caller still returns only once its own row is committed.

A row that cannot be written at all (an outage outlasting the caller's patience, a refusal)
is remembered in this process instead (`remember_unrecorded`, the 10,000 latest), so this
replica never sends that e-mail again itself.

The table is RANGE-partitioned by event id (a UUIDv7: the time the order was placed), and the
ledger janitor (`worker.py`) drops whole partitions past `ACME_LEDGER_RETENTION_S` instead of
deleting rows (docs/adr/0018-partitioned-tables.md). An event id beyond the partitions
made ahead (not a UUIDv7 of ours) cannot be recorded: that row is refused, as above.

What the server said is stored cleaned (`acme_runtime.text.printable`: one line, no NUL, no
undecodable bytes, at most `SMTP_REPLY_MAX_CHARS`). Should PostgreSQL still refuse a batch
with a data error, its rows are inserted one by one, so one row can never fail its neighbours,
and a row refused alone goes in without the server's words. Only a row refused even then (a
defect, not an outage) reaches the caller as an error.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Final, NamedTuple

import asyncpg
import structlog

from acme_notify.smtp import SMTP_REPLY_MAX_CHARS
from acme_runtime.coalesce import Coalescer
from acme_runtime.failures import is_outage
from acme_runtime.migrate import Migration, discover
from acme_runtime.text import printable

__all__ = ["LEDGER_TABLE", "SendLedger", "migrations"]

#: RANGE-partitioned by event_id (a UUIDv7), its primary key: still unique across partitions.
LEDGER_TABLE: Final = "notify.sent_ledger"


def migrations() -> list[Migration]:
    return discover("notify", Path(__file__).parent / "migrations")


log = structlog.get_logger(__name__)

#: How many unrecordable e-mails a replica remembers (the oldest are forgotten first).
UNRECORDED_MEMORY: Final = 10_000
#: Stored instead of a server reply that PostgreSQL refused even cleaned.
UNSTORABLE_REPLY: Final = "250 (reply not storable)"

_SQL_LOOKUP: Final = (
    "SELECT event_id, message_id FROM notify.sent_ledger WHERE event_id = ANY($1::uuid[])"
)
_SQL_RECORD: Final = """
INSERT INTO notify.sent_ledger
    (event_id, order_id, message_id, smtp_reply, consumer, deliveries, provider)
SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], $6::int[],
                     $7::text[])
ON CONFLICT (event_id) DO NOTHING
"""


class _Sent(NamedTuple):
    event_id: uuid.UUID
    order_id: uuid.UUID
    message_id: str
    smtp_reply: str
    consumer: str
    deliveries: int
    provider: str


class SendLedger:
    def __init__(self, pool: asyncpg.Pool, *, max_batch: int = 256) -> None:
        self._pool = pool
        self._lookups = Coalescer(self._lookup_batch, max_batch=max_batch)
        self._records = Coalescer(self._record_batch, max_batch=max_batch)
        # event id -> Message-ID of e-mails accepted whose row could not be written.
        self._unrecorded: OrderedDict[str, str] = OrderedDict()

    async def already_sent(self, event_id: str) -> str | None:
        """The Message-ID of the e-mail already sent for `event_id`, or None."""
        remembered = self._unrecorded.get(event_id)
        if remembered is not None:
            return remembered
        return await self._lookups(uuid.UUID(event_id))

    def remember_unrecorded(self, event_id: str, message_id: str) -> None:
        """An e-mail was accepted but its row could not be written: answer for it from memory."""
        self._unrecorded[event_id] = message_id
        while len(self._unrecorded) > UNRECORDED_MEMORY:
            self._unrecorded.popitem(last=False)

    async def record_sent(
        self,
        *,
        event_id: str,
        order_id: str,
        message_id: str,
        smtp_reply: str,
        consumer: str,
        deliveries: int,
        provider: str = "primary",
    ) -> None:
        """Records an accepted e-mail; returns once the row is committed (first one wins).
        Raises what PostgreSQL answered: an outage, or a refusal of this very row."""
        refused = await self._records(
            _Sent(
                uuid.UUID(event_id),
                uuid.UUID(order_id),
                message_id,
                printable(smtp_reply, SMTP_REPLY_MAX_CHARS),
                consumer,
                deliveries,
                provider,
            )
        )
        if refused is not None:
            raise refused

    async def _lookup_batch(self, event_ids: Sequence[uuid.UUID]) -> list[str | None]:
        rows = await self._pool.fetch(_SQL_LOOKUP, list(event_ids))
        found: dict[uuid.UUID, str] = {row["event_id"]: row["message_id"] for row in rows}
        return [found.get(event_id) for event_id in event_ids]

    async def _record_batch(self, records: Sequence[_Sent]) -> list[asyncpg.PostgresError | None]:
        try:
            await self._insert(records)
        except asyncpg.PostgresError as exc:
            if is_outage(exc):
                raise
            return [await self._insert_alone(record) for record in records]
        return [None] * len(records)

    async def _insert(self, records: Sequence[_Sent]) -> None:
        # One column per array: unnest() zips them back into rows.
        columns = list(zip(*records, strict=True))
        await self._pool.execute(_SQL_RECORD, *(list(column) for column in columns))

    async def _insert_alone(self, record: _Sent) -> asyncpg.PostgresError | None:
        """One row of a refused batch; refused alone, it goes in without the server's reply.
        Returns the refusal of a row that cannot go in at all."""
        for attempt in (record, record._replace(smtp_reply=UNSTORABLE_REPLY)):
            try:
                await self._insert([attempt])
                return None
            except asyncpg.PostgresError as exc:
                if is_outage(exc):
                    raise
                log.error(
                    "ledger_row_refused",
                    event_id=str(record.event_id),
                    smtp_reply=attempt.smtp_reply,
                    error=repr(exc),
                )
                refusal = exc
        return refusal
