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

__all__ = ["Migration", "apply_migrations", "discover", "lock_migrations"]

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
-- Partition maintenance by roles that do not own the partitioned tables (ADR 0020). Creating
-- or dropping a partition is the owner's right alone; the janitors of both services log in as
-- their service's role and call these instead, which run as the owner and act only on a
-- partition, named after its parent, of a partitioned table the caller (session_user) may
-- insert into: the order service's role can maintain order_timeline, the notifier's
-- notify.sent_ledger, neither the other's, and nothing else can be created or dropped.
CREATE OR REPLACE FUNCTION acme_partition_create(
        parent regclass, name text, lower_bound uuid, upper_bound uuid) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    schema_name text;
    parent_name text;
BEGIN
    SELECT n.nspname, c.relname INTO schema_name, parent_name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.oid = parent AND c.relkind = 'p';
    IF parent_name IS NULL THEN
        RAISE EXCEPTION '% is not a partitioned table', parent USING ERRCODE = 'wrong_object_type';
    END IF;
    IF NOT has_table_privilege(session_user, parent, 'INSERT') THEN
        RAISE EXCEPTION 'permission denied for table %', parent
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF left(name, length(parent_name) + 1) <> parent_name || '_' THEN
        RAISE EXCEPTION 'a partition of % is named %_...', parent, parent_name
            USING ERRCODE = 'invalid_name';
    END IF;
    EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%s) TO (%s)',
                   schema_name, name, schema_name, parent_name,
                   coalesce(quote_literal(lower_bound), 'MINVALUE'),
                   coalesce(quote_literal(upper_bound), 'MAXVALUE'));
END $$;
CREATE OR REPLACE FUNCTION acme_partition_drop(parent regclass, name text) RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
    AS $$
DECLARE
    child regclass;
BEGIN
    IF NOT has_table_privilege(session_user, parent, 'INSERT') THEN
        RAISE EXCEPTION 'permission denied for table %', parent
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    SELECT i.inhrelid::regclass INTO child
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = parent AND c.relname = name;
    IF child IS NULL THEN
        RAISE EXCEPTION '% is not a partition of %', name, parent
            USING ERRCODE = 'undefined_table';
    END IF;
    EXECUTE format('DROP TABLE %s', child);
END $$;
REVOKE ALL ON FUNCTION acme_partition_create(regclass, text, uuid, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION acme_partition_drop(regclass, text) FROM PUBLIC;
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


async def lock_migrations(conn: asyncpg.Connection) -> None:
    """Takes the lock every migration runner takes, until the caller's transaction ends: what
    runs under it (a file, the grants of acme setup-acl) never interleaves with another."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)


async def apply_migrations(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    """Applies what is missing; returns the `service/version` names applied by this call."""
    applied_now: list[str] = []
    async with conn.transaction():
        await lock_migrations(conn)
        await conn.execute(_BOOTSTRAP)
    for migration in migrations:
        async with conn.transaction():
            # Taken again per file: a concurrent runner applies whole files between ours, and
            # what it applied is read after the lock, never before.
            await lock_migrations(conn)
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
