"""PostgreSQL pool helpers shared by both services."""

from __future__ import annotations

import asyncpg

__all__ = ["reset_connection"]


async def reset_connection(conn: asyncpg.Connection) -> None:
    """Resets a pooled connection on release, cheaply.

    asyncpg's default reset runs `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL` on every release: a round trip per query for sessions that never use any of it
    (profiled at ~8 % of the notifier's CPU). Our pooled connections hold no session state, so
    only an unfinished transaction, left by a cancelled query, needs undoing.
    """
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")
