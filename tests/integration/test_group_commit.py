"""The API's group commit on a real PostgreSQL: concurrent orders written by one statement, and
one order's trouble kept its own (a key taken, a refused row, a request that gave up), while an
outage fails exactly the orders of the statement it broke."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
import msgspec
import pytest

from acme_orders.domain import Customer
from acme_orders.events import build_envelope, encode_envelope
from acme_orders.group_commit import GroupCommit
from acme_orders.store import Created, IdempotencyMismatch, NewOrder, OrderStore, Replayed
from acme_runtime.failures import is_outage
from acme_runtime.ids import uuid7
from tests.integration.test_outbox import draft


def new_order(*, name: str = "Ana", key: str | None = None, quantity: int = 1) -> NewOrder:
    base = draft()
    order_draft = msgspec.structs.replace(
        base,
        customer=Customer(name=name, email=base.customer.email, locale=base.customer.locale),
        items=tuple(msgspec.structs.replace(item, quantity=quantity) for item in base.items),
    )
    order_id, event_id, now = uuid7(), uuid7(), datetime.now(UTC)
    envelope = encode_envelope(
        build_envelope(
            event_id=str(event_id),
            order_id=str(order_id),
            draft=order_draft,
            created_at=now,
            traceparent=None,
        )
    )
    return NewOrder(
        order_id=order_id,
        event_id=event_id,
        draft=order_draft,
        created_at=now,
        envelope=envelope,
        trace_id=None,
        idempotency_key=key,
    )


async def written(pool: asyncpg.Pool, order: NewOrder) -> tuple[int, int, int, int]:
    """(orders, items, outbox rows, timeline entries) stored for `order`."""
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM orders WHERE id = $1),"
        " (SELECT count(*) FROM order_items WHERE order_id = $1),"
        " (SELECT count(*) FROM outbox WHERE order_id = $1),"
        " (SELECT count(*) FROM order_timeline WHERE order_id = $1)",
        order.order_id,
    )
    assert row is not None
    return (row[0], row[1], row[2], row[3])


def items_of(order: NewOrder) -> int:
    return len(order.draft.items)


async def test_concurrent_orders_are_written_by_one_statement_each_whole(
    pool: asyncpg.Pool,
) -> None:
    sizes: list[int] = []
    writer = GroupCommit(OrderStore(pool), max_in_flight=1, observe_batch=sizes.append)
    orders = [new_order(name=f"Customer {n}") for n in range(50)]
    outcomes = await asyncio.gather(*(writer.write(order) for order in orders))
    assert outcomes == [Created(order.order_id) for order in orders]
    assert sum(sizes) == 50 and len(sizes) <= 2, f"50 orders in {len(sizes)} statements"
    for order in orders:
        assert await written(pool, order) == (1, items_of(order), 1, 1)
    stored = await pool.fetchval(
        "SELECT customer_name FROM orders WHERE id = $1", orders[17].order_id
    )
    assert stored == "Customer 17", "each order's columns land on its own row"


async def test_a_key_used_twice_in_one_batch_makes_one_order_and_replays_the_same_body(
    pool: asyncpg.Pool,
) -> None:
    writer = GroupCommit(OrderStore(pool), max_in_flight=1)
    first, same, other = (
        new_order(key="k-1"),
        new_order(key="k-1"),
        new_order(key="k-1", quantity=9),
    )
    outcomes = await asyncio.gather(writer.write(first), writer.write(same), writer.write(other))
    assert outcomes == [
        Created(first.order_id),
        Replayed(first.order_id),
        IdempotencyMismatch(first.order_id),
    ]
    assert await written(pool, same) == (0, 0, 0, 0)
    assert await written(pool, other) == (0, 0, 0, 0)
    assert await pool.fetchval("SELECT count(*) FROM idempotency_keys WHERE key = 'k-1'") == 1


async def test_a_row_postgresql_refuses_fails_only_its_own_request(pool: asyncpg.Pool) -> None:
    await pool.execute(
        """
        CREATE FUNCTION refuse_mallory() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.customer_name = 'Mallory' THEN
                RAISE EXCEPTION 'orders from Mallory are refused' USING ERRCODE = '23514';
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER refuse_mallory BEFORE INSERT ON orders
            FOR EACH ROW EXECUTE FUNCTION refuse_mallory();
        """
    )
    sizes: list[int] = []
    writer = GroupCommit(OrderStore(pool), max_in_flight=1, observe_batch=sizes.append)
    orders = [new_order(name="Mallory" if n == 3 else f"Customer {n}") for n in range(8)]
    outcomes = await asyncio.gather(
        *(writer.write(order) for order in orders), return_exceptions=True
    )
    refused = outcomes.pop(3)
    assert isinstance(refused, asyncpg.PostgresError) and not is_outage(refused)
    assert "Mallory" in str(refused)
    good = orders[:3] + orders[4:]
    assert outcomes == [Created(order.order_id) for order in good]
    for order in good:
        assert await written(pool, order) == (1, items_of(order), 1, 1)
    assert await written(pool, orders[3]) == (0, 0, 0, 0)


async def test_a_connection_lost_mid_statement_fails_its_batch_and_writes_none_of_it(
    pool: asyncpg.Pool, database_url: str
) -> None:
    """The statement's backend is terminated by the server while it waits on a lock: every
    order of that statement gets the outage (each request answers 503), none is half written;
    the writer goes on with the next orders."""
    writer = GroupCommit(OrderStore(pool), max_in_flight=1)
    blocker = await asyncpg.connect(database_url)
    try:
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")
        orders = [new_order(name=f"Customer {n}") for n in range(5)]
        writes = [asyncio.ensure_future(writer.write(order)) for order in orders]
        waiting: int | None = None
        async with asyncio.timeout(10):
            while waiting is None:
                await asyncio.sleep(0.02)
                waiting = await blocker.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%INSERT INTO orders%'"
                )
        assert await blocker.fetchval("SELECT pg_terminate_backend($1)", waiting)
        outcomes = await asyncio.gather(*writes, return_exceptions=True)
        await blocking.rollback()
    finally:
        await blocker.close()
    assert all(isinstance(o, Exception) and is_outage(o) for o in outcomes), outcomes
    for order in orders:
        assert await written(pool, order) == (0, 0, 0, 0)
    after = new_order()
    assert await writer.write(after) == Created(after.order_id)


async def test_a_request_that_gave_up_before_its_batch_was_taken_is_not_written(
    pool: asyncpg.Pool,
) -> None:
    writer = GroupCommit(OrderStore(pool), max_in_flight=1)
    kept, abandoned = new_order(), new_order()
    kept_write = asyncio.ensure_future(writer.write(kept))
    abandoned_write = asyncio.ensure_future(writer.write(abandoned))
    await asyncio.sleep(0)  # both queued, the writer not yet running
    abandoned_write.cancel()
    assert await kept_write == Created(kept.order_id)
    with pytest.raises(asyncio.CancelledError):
        await abandoned_write
    assert await written(pool, kept) == (1, items_of(kept), 1, 1)
    assert await written(pool, abandoned) == (0, 0, 0, 0)


def test_a_writer_needs_room_for_one_order_and_one_statement() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        GroupCommit(OrderStore(None), max_batch=0)  # type: ignore[arg-type]


async def test_the_ids_of_orders_left_out_are_not_claimed_as_written(pool: asyncpg.Pool) -> None:
    """insert_orders returns only what it wrote: a key taken earlier keeps its order out."""
    store = OrderStore(pool)
    earlier, later, fresh = new_order(key="k-2"), new_order(key="k-2"), new_order()
    assert await store.insert_orders(pool, [earlier]) == {earlier.order_id}
    assert await store.insert_orders(pool, [later, fresh]) == {fresh.order_id}
    assert await written(pool, later) == (0, 0, 0, 0)
