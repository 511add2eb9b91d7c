"""Partitioned timeline and send ledger on real PostgreSQL: created ahead, dropped whole past
retention, the ledger's uniqueness kept, and the migration of an existing deployment.

Time is given, never slept for: ids are UUIDv7s of chosen milliseconds and each round of
maintenance is told its `now_ms`, with 60 s partitions and minutes of retention.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from acme_cli.migrations import all_migrations
from acme_notify.ledger import LEDGER_TABLE, SendLedger
from acme_orders.store import TIMELINE_TABLE, OrderStore, Published
from acme_runtime.ids import uuid7, uuid7_time_ms
from acme_runtime.migrate import apply_migrations
from acme_runtime.partitions import (
    MIN_AHEAD_S,
    Partition,
    list_partitions,
    maintain,
    uuid7_bound,
)
from acme_runtime.pg import init_connection
from tests.integration.test_outbox import insert_order

MINUTE_MS = 60_000
#: Migrations that existed before the tables were partitioned.
BEFORE = {"orders": "0003_outbox_traceparent", "notify": "0002_ledger_provider"}
#: Later expand-only migrations whose columns today's code writes (orders.api_key_id,
#: outbox.shard): applied
#: with the old schema, as a deployment runs them before the code that writes them.
WRITTEN_BY_TODAYS_CODE = {"0008_api_keys", "0009_outbox_shard"}


@pytest.fixture
async def floor_pool(empty_database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A new install just migrated: each partitioned table has its floor partition only (the
    test template has its partitions made ahead, as every process makes them at start)."""
    conn = await asyncpg.connect(empty_database_url)
    try:
        await apply_migrations(conn, all_migrations())
    finally:
        await conn.close()
    created = await asyncpg.create_pool(
        empty_database_url, min_size=1, max_size=5, init=init_connection
    )
    try:
        yield created
    finally:
        await created.close()


async def floor_upper_ms(pool: asyncpg.Pool, table: str) -> int:
    """Where the migrated table's floor partition ends (the migration's time on a new
    install)."""
    [floor] = await list_partitions(pool, table)
    assert floor.lower is None and floor.upper is not None
    return uuid7_time_ms(floor.upper)


def covers(parts: list[Partition], ms: int) -> bool:
    key = uuid7_bound(ms).int
    return any(
        (p.lower is None or p.lower.int <= key) and (p.upper is None or key < p.upper.int)
        for p in parts
    )


def contiguous(parts: list[Partition]) -> bool:
    return parts[0].lower is None and all(a.upper == b.lower for a, b in itertools.pairwise(parts))


async def record(ledger: SendLedger, event_id: uuid.UUID, message_id: str) -> None:
    await ledger.record_sent(
        event_id=str(event_id),
        order_id=str(uuid7(uuid7_time_ms(event_id))),
        message_id=message_id,
        smtp_reply="250 OK",
        consumer="c1",
        deliveries=1,
    )


async def test_both_tables_are_partitioned_with_a_floor_and_created_ahead(
    floor_pool: asyncpg.Pool,
) -> None:
    """After the migrations: a floor partition only; one round covers now to an hour ahead."""
    pool = floor_pool
    for table in (TIMELINE_TABLE, LEDGER_TABLE):
        # Each table's own: the two migrations may straddle a minute.
        base = await floor_upper_ms(pool, table)
        now = base + 10 * MINUTE_MS + 30_000
        done = await maintain(pool, table, interval_s=60, retention_s=3_600, now_ms=now)
        parts = await list_partitions(pool, table)
        assert contiguous(parts), table
        assert covers(parts, now) and covers(parts, now + MIN_AHEAD_S * 1000), table
        # The ten minutes nobody made partitions for are one partition, then one per minute.
        gap = parts[1]
        assert (gap.lower, gap.upper) == (uuid7_bound(base), uuid7_bound(now // 60_000 * 60_000))
        assert all(p.upper_ms - uuid7_time_ms(p.lower) == 60_000 for p in parts[2:] if p.lower)
        assert len(done.created) == len(parts) - 1
        again = await maintain(pool, table, interval_s=60, retention_s=3_600, now_ms=now + 1_000)
        assert again.created == () and again.dropped == ()


async def test_replicas_racing_create_each_partition_once(floor_pool: asyncpg.Pool) -> None:
    """Four janitors at once: one round does the work, the others skip; no error, no gap."""
    pool = floor_pool
    now = await floor_upper_ms(pool, TIMELINE_TABLE) + MINUTE_MS
    rounds = await asyncio.gather(
        *[
            maintain(pool, TIMELINE_TABLE, interval_s=60, retention_s=3_600, now_ms=now)
            for _ in range(4)
        ]
    )
    made = [name for done in rounds for name in done.created]
    parts = await list_partitions(pool, TIMELINE_TABLE)
    assert sorted(made) == sorted(p.name for p in parts if p.lower is not None)
    assert contiguous(parts)


async def test_crossing_the_retention_drops_exactly_the_old_partitions(
    floor_pool: asyncpg.Pool,
) -> None:
    """Partitions wholly past retention go with their rows; the live ones keep theirs; the
    orders themselves stay."""
    pool = floor_pool
    store = OrderStore(pool)
    start = await floor_upper_ms(pool, TIMELINE_TABLE)
    await maintain(pool, TIMELINE_TABLE, interval_s=60, retention_s=300, now_ms=start)
    placed = {
        minute: await insert_order(store, start + minute * MINUTE_MS + 1) for minute in range(8)
    }
    now = start + 8 * MINUTE_MS + 30_000
    # Cutoff at minute 3.5: minutes 0-2 ended before it; minute 3 straddles it and stays.
    done = await maintain(pool, TIMELINE_TABLE, interval_s=60, retention_s=300, now_ms=now)
    minutes = (datetime.fromtimestamp((start + m * MINUTE_MS) / 1000, UTC) for m in range(3))
    expected = {"order_timeline_floor"} | {f"order_timeline_p{t:%Y%m%d_%H%M%S}" for t in minutes}
    assert set(done.dropped) == expected
    for minute, (order_id, _event) in placed.items():
        order = await store.get_order(order_id)
        assert order is not None, "orders are kept"
        kinds = [entry["kind"] for entry in order["timeline"]]
        assert kinds == ([] if minute < 3 else ["created"]), minute
    parts = await list_partitions(pool, TIMELINE_TABLE)
    assert contiguous(parts) and parts[0].upper == uuid7_bound(start + 3 * MINUTE_MS)


async def test_an_insert_far_in_the_past_lands_in_the_floor_and_one_in_the_future_is_refused(
    floor_pool: asyncpg.Pool,
) -> None:
    """The past is always held (and dropped at the next round); beyond the partitions made
    ahead, PostgreSQL refuses the row (check_violation) rather than guess."""
    pool = floor_pool
    store = OrderStore(pool)
    start = await floor_upper_ms(pool, TIMELINE_TABLE)
    await maintain(pool, TIMELINE_TABLE, interval_s=60, retention_s=300, now_ms=start)
    now = start + 20 * MINUTE_MS
    await maintain(pool, TIMELINE_TABLE, interval_s=60, retention_s=300, now_ms=now)
    old_order, _ = await insert_order(store, start - 86_400_000)
    where = await pool.fetchval(
        "SELECT tableoid::regclass::text FROM order_timeline WHERE order_id = $1", old_order
    )
    assert where == "order_timeline_floor"
    with pytest.raises(asyncpg.CheckViolationError, match="no partition"):
        await insert_order(store, now + 10 * 365 * 86_400_000)
    await maintain(pool, TIMELINE_TABLE, interval_s=60, retention_s=300, now_ms=now + MINUTE_MS)
    order = await store.get_order(old_order)
    assert order is not None and order["timeline"] == []


async def test_the_ledger_refuses_a_second_row_per_event_across_partitions(
    floor_pool: asyncpg.Pool,
) -> None:
    """event_id is the partition key and the primary key: still one row per event, and a
    retention round drops whole old partitions only."""
    pool = floor_pool
    ledger = SendLedger(pool)
    start = await floor_upper_ms(pool, LEDGER_TABLE)
    for now in (start, start + 40 * MINUTE_MS):
        await maintain(pool, LEDGER_TABLE, interval_s=60, retention_s=3_600, now_ms=now)
    events = [uuid7(start + minute * MINUTE_MS + 5) for minute in range(-1, 90, 10)]
    for number, event_id in enumerate(events):
        await record(ledger, event_id, f"<m{number}@a>")
    homes = await pool.fetch("SELECT DISTINCT tableoid FROM notify.sent_ledger")
    assert len(homes) == len(events), "one partition each, the floor included"
    for event_id in events:
        await record(ledger, event_id, "<second@a>")
        with pytest.raises(asyncpg.UniqueViolationError):
            await pool.execute(
                "INSERT INTO notify.sent_ledger (event_id, order_id, message_id, smtp_reply,"
                " consumer, deliveries) VALUES ($1, $1, 'x', '250', 'c2', 1)",
                event_id,
            )
    assert [await ledger.already_sent(str(e)) for e in events] == [
        f"<m{n}@a>" for n in range(len(events))
    ]
    # Retention 1 h at minute 95: the floor and minutes 0-34 go, minute 35 on stays.
    await maintain(
        pool, LEDGER_TABLE, interval_s=60, retention_s=3_600, now_ms=start + 95 * MINUTE_MS
    )
    fresh = SendLedger(pool)
    kept = [await fresh.already_sent(str(e)) for e in events]
    assert kept == [None] * 4 + [f"<m{n}@a>" for n in range(4, len(events))]


async def test_migrating_a_deployment_keeps_every_row_readable(empty_database_url: str) -> None:
    """Old schema, rows written by the code paths, then the partitioning migrations: every
    order's timeline and every ledger row reads back, and writing goes on above them."""
    migrations = all_migrations()
    old = [
        m
        for m in migrations
        if m.version <= BEFORE[m.service] or m.version in WRITTEN_BY_TODAYS_CODE
    ]
    conn = await asyncpg.connect(empty_database_url)
    try:
        await apply_migrations(conn, old)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(
        empty_database_url, min_size=1, max_size=3, init=init_connection
    )
    try:
        store, ledger = OrderStore(pool), SendLedger(pool)
        now = uuid7_time_ms(uuid7())
        orders = [await insert_order(store, now - n * 3_600_000) for n in range(5)]
        published = [Published(e, o, f"{uuid7_time_ms(o) + 1_000}-0", True) for o, e in orders]
        await store.mark_published(pool, published, "relay")
        # A receipt's entry as the receipts consumer of that release wrote it (its statement
        # names the unique index of that schema, so it is not run here).
        await pool.executemany(
            "INSERT INTO order_timeline (order_id, at, kind, source_id)"
            " VALUES ($1, to_timestamp($2 / 1000.0), 'sent', $3)",
            [(o, uuid7_time_ms(o) + 2_000, f"{uuid7_time_ms(o) + 2_000}-0") for o, _e in orders],
        )
        for n, (_o, e) in enumerate(orders):
            await record(ledger, e, f"<m{n}@a>")
        last_seq = await pool.fetchval("SELECT max(seq) FROM order_timeline")

        conn = await asyncpg.connect(empty_database_url)
        try:
            applied = await apply_migrations(conn, migrations)
        finally:
            await conn.close()
        assert len(applied) == len(migrations) - len(old)

        for n, (order_id, event_id) in enumerate(orders):
            order = await store.get_order(order_id)
            assert order is not None
            assert [e["kind"] for e in order["timeline"]] == ["created", "published", "sent"]
            assert await SendLedger(pool).already_sent(str(event_id)) == f"<m{n}@a>"
        for table in (TIMELINE_TABLE, LEDGER_TABLE):
            [floor] = await list_partitions(pool, table)
            assert floor.name.endswith("_floor") and floor.lower is None
        # Writing goes on: new rows in the floor and, once made, in new partitions above it.
        await maintain(pool, TIMELINE_TABLE, interval_s=86_400, retention_s=30 * 86_400)
        await maintain(pool, LEDGER_TABLE, interval_s=86_400, retention_s=7 * 86_400)
        order_id, event_id = await insert_order(store, uuid7_time_ms(uuid7()))
        await record(ledger, event_id, "<new@a>")
        later, _ = await insert_order(store, await floor_upper_ms_after(pool) + 1)
        seqs = await pool.fetch(
            "SELECT seq FROM order_timeline WHERE order_id = ANY($1::uuid[])", [order_id, later]
        )
        assert all(row["seq"] > last_seq for row in seqs) and len(seqs) == 2
        source = f"{uuid7_time_ms(orders[0][0]) + 2_000}-0"
        with pytest.raises(asyncpg.UniqueViolationError):  # a receipt's entry, once per order
            await pool.execute(
                "INSERT INTO order_timeline (order_id, at, kind, source_id)"
                " VALUES ($1, now(), 'sent', $2)",
                orders[0][0],
                source,
            )
        with pytest.raises(asyncpg.UniqueViolationError):
            await pool.execute(
                "INSERT INTO notify.sent_ledger (event_id, order_id, message_id, smtp_reply,"
                " consumer, deliveries) VALUES ($1, $1, 'x', '250', 'c2', 1)",
                orders[0][1],
            )
    finally:
        await pool.close()


async def floor_upper_ms_after(pool: asyncpg.Pool) -> int:
    """The first millisecond above the timeline's floor partition."""
    parts = await list_partitions(pool, TIMELINE_TABLE)
    assert parts[0].upper is not None
    return uuid7_time_ms(parts[0].upper)
