"""Our own storage failing around a send: never an unbounded resend, never a lost e-mail.

Real PostgreSQL, Redis and SMTP servers throughout. PostgreSQL's refusals are its own: a
trigger that raises (a data error, or a serialization failure for an outage that passes), a
renamed table; its outage is a private server really stopped and started again.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from acme_cli.embedded import EmbeddedPostgres
from acme_cli.smtp_sink import MailSink
from acme_notify.ledger import UNSTORABLE_REPLY, SendLedger, migrations
from acme_notify.streams import RawEntry, Streams
from acme_orders.events import build_envelope, encode_envelope, stream_fields
from acme_runtime.channels import EVENTS_STREAM, NOTIFIER_GROUP, RECEIPTS_STREAM
from acme_runtime.ids import uuid7
from acme_runtime.migrate import apply_migrations
from tests.harness import Rig, build_rig, eventually
from tests.integration.test_outbox import draft

pytestmark = pytest.mark.slow

#: What odd relays answer to an accepted message (sent as these exact bytes).
ODD_REPLIES = [
    b"250 2.0.0 Ok: queued as \x00ABC",
    b"250 2.0.0 accept\xe9 (Latin-1, not UTF-8)",
    b"250-2.0.0 first line\r\n250-second line\r\n250 2.0.0 queued",
    b"250 2.0.0 " + b"x" * 900,
]


@pytest.fixture
async def rig_factory(redis: Redis, sink: MailSink) -> AsyncIterator[Any]:
    rigs: list[Rig] = []

    def build(pool: asyncpg.Pool, *, patience_s: float = 5.0) -> Rig:
        rig = build_rig(redis, pool, sink.url, patience_s=patience_s)
        rigs.append(rig)
        return rig

    yield build
    for rig in rigs:
        await rig.smtp.close()


async def publish(redis: Redis, event_id: str | None = None) -> tuple[str, str]:
    """Adds one order's event to the stream; returns (event id, entry id)."""
    event_id = event_id or str(uuid7())
    order_id = str(uuid7())
    data = encode_envelope(
        build_envelope(
            event_id=event_id,
            order_id=order_id,
            draft=draft(),
            created_at=datetime.now(UTC),
            traceparent=None,
        )
    )
    flat = stream_fields(event_id, order_id, data)
    entry_id: Any = await redis.xadd(EVENTS_STREAM, dict(zip(flat[::2], flat[1::2], strict=True)))
    return event_id, entry_id.decode()


async def refuse_ledger_rows(pool: asyncpg.Pool, condition: str, *, errcode: str) -> None:
    """Makes PostgreSQL itself refuse ledger rows matching `condition` (a trigger raising
    SQLSTATE `errcode`: 22023 is a data error, 40001 a serialization failure)."""
    await pool.execute(
        f"""
        CREATE FUNCTION notify.refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF {condition} THEN
                RAISE EXCEPTION 'refused by the test' USING ERRCODE = '{errcode}';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON notify.sent_ledger
            FOR EACH ROW EXECUTE FUNCTION notify.refuse();
        """
    )


async def read_all(streams: Streams, count: int) -> list[RawEntry]:
    await streams.ensure_group()
    return await streams.read_new(count, 10)


async def pending_count(redis: Redis) -> int:
    summary: Any = await redis.xpending(EVENTS_STREAM, NOTIFIER_GROUP)
    return int(summary["pending"])


async def sent_receipts(redis: Redis) -> int:
    receipts: Any = await redis.xrange(RECEIPTS_STREAM)
    return sum(1 for _id, fields in receipts if fields[b"type"] == b"sent")


async def test_odd_250_replies_are_recorded_cleaned_and_each_email_sent_once(
    redis: Redis, pool: asyncpg.Pool, sink: MailSink, rig_factory: Any
) -> None:
    """NUL, Latin-1, multi-line and 900-character 250s: every e-mail once, every row stored."""
    rig: Rig = rig_factory(pool)
    replies = iter(ODD_REPLIES * 5)

    def next_reply(_envelope: Any) -> None:
        sink.accepted_reply = next(replies)

    sink.policy = next_reply  # picks the reply for the message being accepted now
    await rig.streams.ensure_group()
    for _ in range(20):
        await publish(redis)
    for entry in await read_all(rig.streams, 20):
        rig.processor.submit(entry)
    await rig.processor.drain()
    assert len(sink.messages) == 20
    rows = await pool.fetch("SELECT smtp_reply FROM notify.sent_ledger")
    assert len(rows) == 20
    stored = {row["smtp_reply"] for row in rows}
    assert "250 2.0.0 Ok: queued as \\x00ABC" in stored
    assert "250 2.0.0 accept\\xe9 (Latin-1, not UTF-8)" in stored
    assert "250 2.0.0 first line | second line | 2.0.0 queued" in stored
    assert max(len(reply) for reply in stored) == 500
    assert await pending_count(redis) == 0
    assert rig.bookkeeping_failures("ledger") == 0


async def test_a_row_postgresql_refuses_never_fails_its_neighbours(pool: asyncpg.Pool) -> None:
    """In one coalesced batch, the refused row goes in without its reply; the others as is."""
    await refuse_ledger_rows(pool, "NEW.smtp_reply LIKE '%poison%'", errcode="22023")
    ledger = SendLedger(pool)
    events = [str(uuid7()) for _ in range(5)]
    await asyncio.gather(
        *(
            ledger.record_sent(
                event_id=event_id,
                order_id=str(uuid7()),
                message_id=f"<m{n}@acme>",
                smtp_reply="250 poison" if n == 2 else f"250 ok {n}",
                consumer="solo",
                deliveries=1,
            )
            for n, event_id in enumerate(events)
        )
    )
    rows = await pool.fetch("SELECT event_id::text, smtp_reply FROM notify.sent_ledger")
    replies = {row["event_id"]: row["smtp_reply"] for row in rows}
    assert replies == {
        event_id: UNSTORABLE_REPLY if n == 2 else f"250 ok {n}" for n, event_id in enumerate(events)
    }


async def test_an_email_whose_ledger_row_is_refused_is_acknowledged_and_never_resent(
    redis: Redis, pool: asyncpg.Pool, sink: MailSink, rig_factory: Any
) -> None:
    """A row refused even cleaned: the e-mail is acknowledged as sent, counted, and a
    re-drive of the same event sends nothing (this replica remembers it)."""
    rig: Rig = rig_factory(pool)
    event_id, _entry_id = await publish(redis)
    await refuse_ledger_rows(pool, f"NEW.event_id = '{event_id}'", errcode="22023")
    [entry] = await read_all(rig.streams, 1)
    await rig.process(entry)
    assert len(sink.messages) == 1
    assert await pending_count(redis) == 0, "acknowledged although unrecorded"
    assert await sent_receipts(redis) == 1, "the order learns that its e-mail went out"
    assert rig.bookkeeping_failures("ledger") == 1
    await publish(redis, event_id)  # the relay's re-drive of the same event
    [again] = await rig.streams.read_new(1, 10)
    await rig.process(again)
    assert len(sink.messages) == 1, "no second e-mail"
    assert await pending_count(redis) == 0


async def test_a_ledger_outage_after_the_250_is_waited_out_without_a_second_email(
    redis: Redis, pool: asyncpg.Pool, sink: MailSink, rig_factory: Any
) -> None:
    """PostgreSQL answering with serialization failures for a moment after the 250: the row
    is retried until it commits, and the entry is acknowledged once."""
    await pool.execute(
        "CREATE TABLE notify.outage (on_until timestamptz NOT NULL);"
        " INSERT INTO notify.outage VALUES (now() + interval '600 ms')"
    )
    # 40001, a serialization failure: an outage that passes, as far as the notifier can tell.
    await refuse_ledger_rows(
        pool,
        "EXISTS (SELECT FROM notify.outage WHERE clock_timestamp() < on_until)",
        errcode="40001",
    )
    rig: Rig = rig_factory(pool, patience_s=10.0)
    event_id, _entry = await publish(redis)
    [entry] = await read_all(rig.streams, 1)
    await rig.process(entry)
    assert len(sink.messages) == 1
    assert await rig.ledger.already_sent(event_id) is not None
    assert await pending_count(redis) == 0
    assert rig.bookkeeping_failures("ledger") == 0


async def test_a_refused_ledger_lookup_uses_up_the_try_instead_of_looping(
    redis: Redis, pool: asyncpg.Pool, sink: MailSink, rig_factory: Any
) -> None:
    """PostgreSQL refusing the look-up (a missing table: a defect, not an outage) sends
    nothing and gives nothing back, so the reaper ends the entry in time."""
    rig: Rig = rig_factory(pool)
    await publish(redis)
    [entry] = await read_all(rig.streams, 1)
    await pool.execute("ALTER TABLE notify.sent_ledger RENAME TO sent_ledger_gone")
    try:
        await rig.process(entry._replace(deliveries=2))  # its second delivery
    finally:
        await pool.execute("ALTER TABLE notify.sent_ledger_gone RENAME TO sent_ledger")
    [pending] = await redis.xpending_range(EVENTS_STREAM, NOTIFIER_GROUP, "-", "+", 1)
    assert int(pending["times_delivered"]) == 1, "read once, and nothing given back"
    assert sink.messages == []


@pytest.fixture
async def private_postgres() -> AsyncIterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, so that stopping it disturbs no other test."""
    root = Path(tempfile.mkdtemp(prefix="acme-test-ledger-pg-"))
    server = EmbeddedPostgres(root / "data", durable=False)
    url = await asyncio.to_thread(server.start)
    try:
        conn = await asyncpg.connect(url)
        try:
            await apply_migrations(conn, migrations())
        finally:
            await conn.close()
        yield server
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(root, ignore_errors=True)


async def test_an_unreachable_ledger_before_the_send_gives_the_try_back_and_sends_nothing(
    redis: Redis, sink: MailSink, rig_factory: Any, private_postgres: EmbeddedPostgres
) -> None:
    """PostgreSQL stopped for real: no e-mail, the try given back; started again: sent once."""
    ledger_pool = await asyncpg.create_pool(private_postgres.url, min_size=1, max_size=2)
    try:
        rig: Rig = rig_factory(ledger_pool)
        await publish(redis)
        [entry] = await read_all(rig.streams, 1)
        await redis.execute_command("XCLAIM", EVENTS_STREAM, NOTIFIER_GROUP, "solo", 0, entry[0])
        await asyncio.to_thread(private_postgres.stop)
        await rig.process(entry._replace(deliveries=2))
        [pending] = await redis.xpending_range(EVENTS_STREAM, NOTIFIER_GROUP, "-", "+", 1)
        assert int(pending["times_delivered"]) == 1, "the failed try was given back"
        assert sink.messages == [], "nothing is sent while the ledger cannot be asked"
        await asyncio.to_thread(private_postgres.start)

        async def delivered() -> bool:
            await rig.process(entry._replace(deliveries=2))
            return len(sink.messages) == 1

        await eventually(delivered, timeout_s=15, what="the e-mail once PostgreSQL is back")
        assert await pending_count(redis) == 0
    finally:
        await ledger_pool.close()
