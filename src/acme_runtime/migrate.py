"""Applies plain-SQL schema migrations, once each, safe to run twice and concurrently.

Each service keeps its migrations as `NNNN_name.sql` files beside its code and owns its rows in
`schema_migrations`. A transaction-scoped advisory lock serialises concurrent runners (two
`acme migrate` Jobs, or `acme up` racing a test), so each file runs exactly once, in order, and a
failing file rolls back whole (the files before it stay applied; the next run resumes there).

Each file is its own transaction, and its locks end with it: a migration can take a strong lock
for an instant in one file (`ADD CONSTRAINT ... NOT VALID`), scan under a weak one in the next
(`VALIDATE CONSTRAINT`, which lets reads and writes go on) and swap tables in a third, instead
of holding the strongest lock across the scan (docs/adr/0018-partitioned-tables.md).
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
);
-- The smallest UUIDv7 of an instant (its 48-bit Unix milliseconds, every other bit zero): the
-- partition bound the services' migrations start from (acme_runtime.partitions.uuid7_bound).
CREATE OR REPLACE FUNCTION acme_uuid7_bound(at timestamptz) RETURNS uuid
    LANGUAGE sql IMMUTABLE STRICT
    AS $$ SELECT (lpad(to_hex((extract(epoch FROM at) * 1000)::bigint), 12, '0')
                  || repeat('0', 20))::uuid $$;
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
    for migration in migrations:
        async with conn.transaction():
            # Taken again per file: a concurrent runner applies whole files between ours, and
            # what it applied is read after the lock, never before.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            done = await conn.fetchval(
                "SELECT true FROM schema_migrations WHERE service = $1 AND version = $2",
                migration.service,
                migration.version,
            )
            if done:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (service, version) VALUES ($1, $2)",
                migration.service,
                migration.version,
            )
            applied_now.append(f"{migration.service}/{migration.version}")
    return applied_now
