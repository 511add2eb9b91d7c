"""Concurrent sends share ledger statements and acknowledgement pipelines, with exact results.

On real PostgreSQL and Redis: a batch must give each caller its own answer, keep the first row
for an event recorded twice, and acknowledge (with one receipt each) exactly its own entries.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from acme_notify.ledger import SendLedger
from acme_notify.streams import Streams
from acme_runtime.channels import EVENTS_STREAM, RECEIPTS_STREAM
from acme_runtime.ids import uuid7
from acme_runtime.lua import load_script

pytestmark = pytest.mark.slow


def _uuid() -> str:
    # Event ids are UUIDv7s: the ledger is partitioned by their time (ADR 0018).
    return str(uuid7())


async def _record(ledger: SendLedger, event_id: str, message_id: str) -> None:
    await ledger.record_sent(
        event_id=event_id,
        order_id=_uuid(),
        message_id=message_id,
        smtp_reply="250 OK " + "x" * 600,
        consumer="c1",
        deliveries=1,
    )


async def test_concurrent_ledger_inserts_commit_in_one_batch_and_the_first_row_wins(
    pool: asyncpg.Pool,
) -> None:
    ledger = SendLedger(pool)
    events = [_uuid() for _ in range(40)]
    await asyncio.gather(
        *(_record(ledger, event_id, f"<m{n}@acme>") for n, event_id in enumerate(events)),
        # The same event recorded twice in one batch (two entries for one event): no error.
        _record(ledger, events[0], "<second@acme>"),
    )
    rows = await pool.fetch("SELECT event_id, message_id, smtp_reply FROM notify.sent_ledger")
    assert len(rows) == 40
    by_event = {str(row["event_id"]): row for row in rows}
    assert by_event[events[0]]["message_id"] == "<m0@acme>"
    assert by_event[events[39]]["message_id"] == "<m39@acme>"
    assert all(len(row["smtp_reply"]) == 500 for row in rows)


async def test_concurrent_ledger_lookups_each_get_their_own_answer(pool: asyncpg.Pool) -> None:
    ledger = SendLedger(pool)
    sent = [_uuid() for _ in range(10)]
    for n, event_id in enumerate(sent):
        await _record(ledger, event_id, f"<sent{n}@acme>")
    unsent = [_uuid() for _ in range(10)]
    asked = [event for pair in zip(sent, unsent, strict=True) for event in pair]
    answers = await asyncio.gather(*(ledger.already_sent(event_id) for event_id in asked))
    assert answers[0::2] == [f"<sent{n}@acme>" for n in range(10)]
    assert answers[1::2] == [None] * 10


async def test_a_ledger_batch_that_fails_fails_each_of_its_callers(pool: asyncpg.Pool) -> None:
    ledger = SendLedger(pool)
    await pool.execute("ALTER TABLE notify.sent_ledger RENAME TO sent_ledger_gone")
    try:
        outcomes = await asyncio.gather(
            *(_record(ledger, _uuid(), "<x@acme>") for _ in range(3)), return_exceptions=True
        )
    finally:
        await pool.execute("ALTER TABLE notify.sent_ledger_gone RENAME TO sent_ledger")
    assert all(isinstance(o, asyncpg.UndefinedTableError) for o in outcomes), outcomes


async def test_acknowledgements_that_finish_together_ack_exactly_their_entries(
    redis: Redis,
) -> None:
    streams = Streams(redis, "acker")
    await streams.ensure_group()
    for n in range(30):
        await redis.xadd(EVENTS_STREAM, {"n": str(n)})
    entries = await streams.read_new(30, 10)
    # A script cache emptied by a Redis restart: the pipeline reloads it and retries.
    await redis.script_flush()
    load_script.cache_clear()
    to_ack, to_keep = entries[:20], entries[20:]
    acked = await asyncio.gather(
        *(
            streams.ack_sent(entry_id, {"type": "sent", "entry": entry_id}, emailed=True)
            for entry_id, *_rest in to_ack
        )
    )
    assert acked == [True] * 20
    pending: Any = await redis.xpending_range(EVENTS_STREAM, "notifier", "-", "+", 100)
    assert {p["message_id"].decode() for p in pending} == {e[0] for e in to_keep}
    receipts: Any = await redis.xrange(RECEIPTS_STREAM)
    assert sorted(fields[b"entry"].decode() for _id, fields in receipts) == sorted(
        e[0] for e in to_ack
    )
    # Acknowledging a redelivery again is a no-op that says so, and adds no receipt.
    again = await asyncio.gather(
        *(
            streams.ack_sent(entry_id, {"type": "sent"}, emailed=False)
            for entry_id, *_rest in to_ack[:5]
        )
    )
    assert again == [False] * 5
    assert await redis.xlen(RECEIPTS_STREAM) == 20
