"""`acme migrate`: applies every service's migrations, each service owning its own files."""

from __future__ import annotations

import asyncpg

from acme_notify.ledger import migrations as notify_migrations
from acme_orders.store import migrations as orders_migrations
from acme_runtime.migrate import Migration, apply_migrations

__all__ = ["all_migrations", "migrate"]


def all_migrations() -> list[Migration]:
    return [*orders_migrations(), *notify_migrations()]


async def migrate(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        return await apply_migrations(conn, all_migrations())
    finally:
        await conn.close()
