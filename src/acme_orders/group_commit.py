"""Group commit: the orders of concurrent requests written by one statement per event-loop turn.

Each `POST /orders` hands its order to `GroupCommit.write` and waits for its own outcome. The
orders that arrive while the writers are busy (or during the same event-loop turn) are written
together, by one `OrderStore.insert_orders` statement on one pooled connection: one round trip,
one transaction and one WAL flush for the lot, instead of one each. A request is still answered
only after the commit that holds its order; `synchronous_commit` stays on.

One order's trouble is its own:
- an Idempotency-Key already taken leaves that order out of the statement, and only its request
  looks the key up (`OrderStore.resolve_key`);
- a statement refused by PostgreSQL (a value or constraint it rejects) is retried one order at a
  time, so only the order at fault gets the error;
- an outage (PostgreSQL down, the connection lost) fails every order of the batch: none of them
  was written, and each request answers 503 as it would have alone;
- a request that gave up (its timeout) before its batch was taken is left out of it.

At most `max_in_flight` statements run at once (a few of the pool's connections; the rest stay
free for reads and the relay), each of at most `max_batch` orders.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Final

import asyncpg

from acme_orders.store import (
    Conn,
    Created,
    IdempotencyMismatch,
    NewOrder,
    OrderStore,
    Replayed,
)
from acme_runtime.failures import is_outage

__all__ = ["DEFAULT_MAX_BATCH", "DEFAULT_MAX_IN_FLIGHT", "GroupCommit"]

#: Orders per statement, at most: 256 orders of 3 items is ~50 KB of parameters.
DEFAULT_MAX_BATCH: Final = 256
#: Statements writing orders at once, at most.
DEFAULT_MAX_IN_FLIGHT: Final = 4

Outcome = Created | Replayed | IdempotencyMismatch
_Waiting = tuple[NewOrder, "asyncio.Future[bool]"]


class GroupCommit:
    def __init__(
        self,
        store: OrderStore,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        observe_batch: Callable[[int], None] | None = None,
    ) -> None:
        """`observe_batch(n)`: told the size of each statement that wrote orders (a metric)."""
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._store = store
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._waiting: deque[_Waiting] = deque()
        self._writers: set[asyncio.Task[None]] = set()
        self._observe_batch = observe_batch

    async def write(self, order: NewOrder) -> Outcome:
        """Writes `order` with whatever other orders are waiting; its outcome once committed.
        Raises what PostgreSQL raised for it (an outage, or a refusal of this order)."""
        while True:
            written: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._waiting.append((order, written))
            if len(self._writers) < self._max_in_flight:
                writer = asyncio.create_task(self._write_waiting(), name="group-commit")
                self._writers.add(writer)
                writer.add_done_callback(self._writers.discard)
            if await written:
                return Created(order.order_id)
            outcome = await self._store.resolve_key(order)
            if outcome is not None:
                return outcome
            # The key expired between the statement and the look-up: write the order again.

    async def _write_waiting(self) -> None:
        while self._waiting:
            async with self._store.pool.acquire() as conn:
                batch = self._take()
                if batch:
                    await self._write(conn, batch)

    def _take(self) -> list[_Waiting]:
        batch: list[_Waiting] = []
        while self._waiting and len(batch) < self._max_batch:
            order, written = self._waiting.popleft()
            if not written.done():  # a request that gave up is not written
                batch.append((order, written))
        return batch

    async def _write(self, conn: Conn, batch: list[_Waiting]) -> None:
        try:
            ids = await self._store.insert_orders(conn, [order for order, _ in batch])
        except Exception as exc:  # noqa: BLE001 - handed to the requests it concerns
            if is_outage(exc) or len(batch) == 1 or not isinstance(exc, asyncpg.PostgresError):
                for _, written in batch:
                    _fail(written, exc)
                return
            # Refused: one order at fault. One at a time, so only its request gets the error.
            for one in batch:
                await self._write(conn, [one])
            return
        if self._observe_batch is not None:
            self._observe_batch(len(batch))
        for order, written in batch:
            _succeed(written, order.order_id in ids)

    async def close(self) -> None:
        """Waits for the statements in flight (each answers its requests)."""
        if self._writers:
            await asyncio.gather(*self._writers, return_exceptions=True)


def _succeed(written: asyncio.Future[bool], inserted: bool) -> None:
    if not written.done():
        written.set_result(inserted)


def _fail(written: asyncio.Future[bool], exc: BaseException) -> None:
    if not written.done():
        written.set_exception(exc)
