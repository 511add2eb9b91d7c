"""Applies plain-SQL schema migrations, once each, safe to run twice and concurrently.

Each service keeps its migrations as `NNNN_name.sql` files beside its code and owns its rows in
`schema_migrations`. A transaction-scoped advisory lock serialises concurrent runners (two
`acme migrate` Jobs, or `acme up` racing a test), so each file runs exactly once, in order, and a
failing file rolls back whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import asyncpg

__all__ = ["Migration", "apply_migrations", "discover"]

# Any constant works as long as every runner uses the same one.
_LOCK_KEY = 0x0AC3E_0001

_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    service    text        NOT NULL,
    version    text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, version)
)
"""


@dataclass(frozen=True)
class Migration:
    service: str
    version: str
    sql: str


def discover(service: str, folder: Path) -> list[Migration]:
    """The migrations of one service, sorted by file name."""
    return [
        Migration(service, path.stem, path.read_text(encoding="utf-8"))
        for path in sorted(folder.glob("*.sql"))
    ]


async def apply_migrations(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    """Applies what is missing; returns the `service/version` names applied by this call."""
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(_BOOTSTRAP)
        rows = await conn.fetch("SELECT service, version FROM schema_migrations")
        done = {(row["service"], row["version"]) for row in rows}
        for migration in migrations:
            if (migration.service, migration.version) in done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (service, version) VALUES ($1, $2)",
                migration.service,
                migration.version,
            )
            applied_now.append(f"{migration.service}/{migration.version}")
    return applied_now
