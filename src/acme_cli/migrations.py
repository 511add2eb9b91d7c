"""`acme migrate`: applies every service's migrations, each service owning its own files, then
the service roles' privileges (acme_cli.acl.pg_roles), so a table a migration adds is granted
to the roles that use it at once."""

from __future__ import annotations

import asyncpg

from acme_cli.acl.pg_roles import grant_privileges
from acme_notify.ledger import migrations as notify_migrations
from acme_orders.store import migrations as orders_migrations
from acme_runtime.migrate import Migration, apply_migrations

__all__ = ["all_migrations", "migrate"]


def all_migrations() -> list[Migration]:
    return [*orders_migrations(), *notify_migrations()]


async def migrate(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        applied = await apply_migrations(conn, all_migrations())
        # Only for the roles that exist (acme setup-acl makes them); none: nothing to do.
        await grant_privileges(conn)
        return applied
    finally:
        await conn.close()
