"""Telling an outage of our own storage from a refusal, and waiting out a short outage.

An **outage** (PostgreSQL or Redis unreachable, restarting, failing over, overloaded) ends by
itself: the work is retried and its try given back. A **refusal** (a value PostgreSQL rejects,
a constraint, a script error) happens again every time for the same input: retrying it for
ever would turn one bad row into unbounded work, or, after an e-mail went out, into unbounded
resends. Both services decide with `is_outage`, so the two kinds are told apart in one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final, TypeVar

import asyncpg
from redis import exceptions as redis_errors

from acme_runtime.backoff import Backoff

__all__ = ["is_outage", "retry_outages"]

T = TypeVar("T")

#: SQLSTATE classes of a database that is unavailable for a while: connection exception (08),
#: transaction rollback (40: serialization failure, deadlock), insufficient resources (53),
#: operator intervention (57: shutdown, cannot connect now, statement timeout), system error
#: (58); and 25006, a read-only transaction (a failover in progress).
_PG_OUTAGE_CLASSES: Final = frozenset({"08", "40", "53", "57", "58"})

#: Failures that pass: the network, a timeout, a closed pool; Redis unreachable, still loading
#: its data, a replica being promoted (READONLY), a cluster reconfiguring (TRYAGAIN, CLUSTERDOWN).
_OUTAGES: Final = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.BusyLoadingError,
    redis_errors.ReadOnlyError,
    redis_errors.TryAgainError,
    redis_errors.ClusterDownError,
)


def is_outage(exc: BaseException) -> bool:
    """True for a failure of PostgreSQL, Redis or the network that passes by itself."""
    if isinstance(exc, _OUTAGES):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        return state[:2] in _PG_OUTAGE_CLASSES or state == "25006"
    return False


async def retry_outages(
    call: Callable[[], Awaitable[T]],
    *,
    patience_s: float,
    first_delay_s: float = 0.05,
    max_delay_s: float = 1.0,
) -> T:
    """`call()`, tried again with a doubling delay while it fails with an outage, for at most
    `patience_s`; a refusal, or an outage outlasting the patience, is raised."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    backoff = Backoff(first_delay_s, max_delay_s)
    while True:
        try:
            return await call()
        except Exception as exc:
            delay_s = backoff.next_s()
            if not is_outage(exc) or loop.time() + delay_s > deadline:
                raise
        await asyncio.sleep(delay_s)
