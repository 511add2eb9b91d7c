"""The PostgreSQL login roles of the services, and exactly what each may do.

The tables belong to the owner role, the one that runs `acme migrate` (its ACME_DATABASE_URL):
it creates them, so it owns them, and only it can grant on them. Each service logs in as its
own role, which owns nothing: it reads and writes rows of the tables its code uses, and
nothing else. Creating and dropping partitions (which PostgreSQL allows only to a table's
owner) goes through two SECURITY DEFINER functions the migrations' bootstrap defines
(acme_runtime.migrate): they act only on partitions of a partitioned table the caller may
insert into, so the order service's janitor maintains `order_timeline` and the notifier's
`notify.sent_ledger`, and neither the other's (ADR 0020).

Grants are applied as a whole: every managed privilege of a role is revoked, then what the
table below says is granted, in one transaction, so a privilege dropped from this file is
dropped from the database too. `acme migrate` applies them again after the migrations, for
the roles that exist, so a table added by a migration is granted at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import asyncpg

from acme_runtime.migrate import lock_migrations

__all__ = ["ROLES", "PgRole", "RoleError", "ensure_roles", "grant_privileges", "scram_verifier"]

PARTITION_FUNCTIONS: Final = (
    "acme_partition_create(regclass, text, uuid, uuid)",
    "acme_partition_drop(regclass, text)",
)
#: Role attributes a service role must never have (checked on a role that already exists).
_POWERS: Final = ("rolsuper", "rolcreaterole", "rolcreatedb", "rolreplication", "rolbypassrls")


class RoleError(Exception):
    """A role cannot be made what it should be (e.g. it exists with superuser powers)."""


@dataclass(frozen=True)
class PgRole:
    name: str
    #: Where `acme setup-acl` finds its password (or in the file named by <this>_FILE).
    password_env: str
    job: str
    #: (table, privileges) pairs; a table name as the migrations created it.
    tables: tuple[tuple[str, str], ...]
    schemas: tuple[str, ...] = ()
    sequences: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()


def _grants(by_privileges: Mapping[str, tuple[str, ...]]) -> tuple[tuple[str, str], ...]:
    """(table, privileges) pairs from privileges -> tables."""
    return tuple((table, p) for p, tables in by_privileges.items() for table in tables)


ROLES: Final = (
    PgRole(
        "acme_orders",
        "ACME_ACL_PG_ORDERS_PASSWORD",
        "the API and the relay: orders, items, timeline, outbox, idempotency and API keys",
        tables=_grants(
            {
                # The API checks a caller's key (keys are the admin CLI's to make), and its
                # readiness whether this service's migrations are applied.
                "SELECT": ("api_keys", "schema_migrations"),
                "SELECT, INSERT": ("order_items", "order_timeline"),
                "SELECT, INSERT, UPDATE": ("orders",),
                "SELECT, INSERT, UPDATE, DELETE": ("outbox",),
                "SELECT, INSERT, DELETE": ("idempotency_keys",),
            }
        ),
        sequences=("order_timeline_seq_seq",),
        functions=PARTITION_FUNCTIONS,
    ),
    PgRole(
        "acme_notifier",
        "ACME_ACL_PG_NOTIFIER_PASSWORD",
        "the notifier: its send ledger and the dead-letter archive",
        schemas=("notify",),
        functions=PARTITION_FUNCTIONS,
        tables=_grants(
            {
                "SELECT, INSERT": ("notify.sent_ledger",),
                "SELECT, INSERT, DELETE": ("notify.dead_letters",),
            }
        ),
    ),
    PgRole(
        "acme_admin",
        "ACME_ACL_PG_ADMIN_PASSWORD",
        "acme dead/stats/trace/keys: reads orders and ledger, takes archived dead letters, "
        "manages API keys",
        tables=_grants(
            {
                "SELECT": (
                    "orders",
                    "order_items",
                    "order_timeline",
                    "outbox",
                    "notify.sent_ledger",
                ),
                "SELECT, INSERT, UPDATE": ("api_keys",),
                "SELECT, INSERT": ("api_key_events",),
                # Replaying or purging an archived entry locks its row (SELECT ... FOR UPDATE,
                # which needs UPDATE on some column) and deletes it; archived_at is the column
                # whose change would do least harm.
                "SELECT, DELETE, UPDATE (archived_at)": ("notify.dead_letters",),
            }
        ),
        schemas=("notify",),
    ),
)


def managed_tables() -> list[str]:
    """Every table some role is granted on: each role's privileges on all of them are reset."""
    return sorted({table for role in ROLES for table, _ in role.tables})


def scram_verifier(password: str, *, salt: bytes | None = None, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802/7677), computed
    here as `psql \\password` does, so the plaintext never reaches the server or its logs.
    PostgreSQL would SASLprep a non-ASCII password first: callers pass printable ASCII."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


async def ensure_roles(conn: asyncpg.Connection, passwords: Mapping[str, str | None]) -> list[str]:
    """Creates each role whose password is given, or sets its password; refuses a role that
    exists with powers a service must not have. Lines name roles, never passwords."""
    lines: list[str] = []
    for role in ROLES:
        password = passwords.get(role.name)
        if password is None:
            lines.append(f"postgres: role {role.name}: skipped ({role.password_env} not set)")
            continue
        row = await conn.fetchrow(
            f"SELECT {', '.join(_POWERS)} FROM pg_roles WHERE rolname = $1",  # noqa: S608 - fixed names
            role.name,
        )
        if row is not None and (powers := [p.removeprefix("rol") for p in _POWERS if row[p]]):
            raise RoleError(
                f"role {role.name} exists with {', '.join(powers)}: a service role must have "
                f"none (ALTER ROLE {role.name} NO{' NO'.join(p.upper() for p in powers)})"
            )
        # The verifier is base64 and `$:` only: nothing in it needs quoting.
        verifier = scram_verifier(password)
        verb = "CREATE" if row is None else "ALTER"
        await conn.execute(f"{verb} ROLE {role.name} WITH LOGIN PASSWORD '{verifier}'")
        lines.append(f"postgres: role {role.name}: {'created' if row is None else 'updated'}")
    return lines


async def grant_privileges(conn: asyncpg.Connection) -> list[str]:
    """Makes the privileges of every existing service role exactly those of ROLES, on the
    tables that exist (before `acme migrate`, none). Serialised with migrations."""
    names = [role.name for role in ROLES]
    present_roles = {
        r["rolname"]
        for r in await conn.fetch("SELECT rolname FROM pg_roles WHERE rolname = ANY($1)", names)
    }
    lines: list[str] = []
    async with conn.transaction():
        await lock_migrations(conn)
        tables = [t for t in managed_tables() if await conn.fetchval("SELECT to_regclass($1)", t)]
        has_notify = await conn.fetchval("SELECT to_regnamespace('notify') IS NOT NULL")
        has_functions = await conn.fetchval(
            "SELECT to_regprocedure($1) IS NOT NULL", PARTITION_FUNCTIONS[0]
        )
        sequences = {s for role in ROLES for s in role.sequences}
        sequences = {s for s in sequences if await conn.fetchval("SELECT to_regclass($1)", s)}
        for role in ROLES:
            if role.name not in present_roles:
                continue
            statements = [f"REVOKE ALL ON TABLE {t} FROM {role.name}" for t in tables]
            statements += [f"REVOKE ALL ON SEQUENCE {s} FROM {role.name}" for s in sequences]
            if has_notify:
                statements.append(f"REVOKE ALL ON SCHEMA notify FROM {role.name}")
            if has_functions:
                statements += [
                    f"REVOKE ALL ON FUNCTION {f} FROM {role.name}" for f in PARTITION_FUNCTIONS
                ]
            granted = [(t, p) for t, p in role.tables if t in tables]
            schemas = role.schemas if has_notify else ()
            statements += [f"GRANT USAGE ON SCHEMA {s} TO {role.name}" for s in schemas]
            statements += [f"GRANT {p} ON TABLE {t} TO {role.name}" for t, p in granted]
            statements += [
                f"GRANT USAGE ON SEQUENCE {s} TO {role.name}"
                for s in role.sequences
                if s in sequences
            ]
            if has_functions:
                statements += [
                    f"GRANT EXECUTE ON FUNCTION {f} TO {role.name}" for f in role.functions
                ]
            if statements:  # none before the first migration
                await conn.execute(";\n".join(statements))
            lines.append(
                f"postgres: role {role.name}: privileges set on {len(granted)} of "
                f"{len(role.tables)} tables"
                + ("" if len(granted) == len(role.tables) else " (acme migrate grants the rest)")
            )
    for role in ROLES:
        if role.name in present_roles and await conn.fetchval(
            "SELECT has_schema_privilege($1, 'public', 'CREATE')", role.name
        ):
            lines.append(
                f"postgres: warning: {role.name} may create tables in schema public (the default "
                "before PostgreSQL 15): REVOKE CREATE ON SCHEMA public FROM PUBLIC"
            )
    return lines
