"""API keys of the order API: their format, and the SQL that issues, lists, revokes and finds them.

A key reads `acme_<id>_<secret>`. The id (12 hex digits) is not secret: it names the key in
`acme keys list`, in the logs and on every order the key placed. The secret is 32 random bytes
(base64url), shown once when the key is created; the table keeps only its SHA-256 (a fast hash
is enough for 256 random bits, nothing to brute-force: docs/adr/0019-api-keys.md). Creating and
revoking a key each write an `api_key_events` row naming the operator, in the same statement.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg

__all__ = [
    "SCOPES",
    "ApiKey",
    "IssuedKey",
    "KeyStore",
    "StoredSecret",
    "issue_key",
    "parse_token",
    "secret_digest",
]

#: Every scope a key may hold: placing orders, reading them.
SCOPES: Final = ("orders:write", "orders:read")

_TOKEN: Final = re.compile(r"acme_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_ID_BYTES: Final = 6
_SECRET_BYTES: Final = 32
_CREATE_ATTEMPTS: Final = 3


def secret_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def parse_token(token: str) -> tuple[str, str] | None:
    """(key id, secret) of a well-formed key, or None."""
    match = _TOKEN.fullmatch(token)
    return None if match is None else (match[1], match[2])


@dataclass(frozen=True)
class ApiKey:
    """What `acme keys list` shows of a key: never its secret, nor its hash."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    created_by: str
    revoked_at: datetime | None
    revoked_by: str | None


@dataclass(frozen=True)
class IssuedKey:
    """A key just created: `token` is the only copy of its secret there will ever be."""

    key: ApiKey
    token: str


@dataclass(frozen=True)
class StoredSecret:
    """What the API needs to check a presented key: the hash, its scopes, whether revoked."""

    digest: bytes
    scopes: frozenset[str]
    revoked: bool


_CREATE: Final = """
WITH k AS (
    INSERT INTO api_keys (id, name, secret_sha256, scopes, created_at, created_by)
    VALUES ($1, $2, $3, $4, now(), $5)
    RETURNING id, created_at
)
INSERT INTO api_key_events (key_id, at, kind, operator)
SELECT id, created_at, 'created', $5 FROM k
RETURNING at
"""
# The final SELECT sees the row as it was before the UPDATE (one snapshot per statement): a
# NULL `revoked_now` with a non-NULL `revoked_at` means revoked earlier.
_REVOKE: Final = """
WITH r AS (
    UPDATE api_keys SET revoked_at = now(), revoked_by = $2
    WHERE id = $1 AND revoked_at IS NULL
    RETURNING id, revoked_at
),
e AS (
    INSERT INTO api_key_events (key_id, at, kind, operator, detail)
    SELECT id, revoked_at, 'revoked', $2, jsonb_build_object('why', $3::text) FROM r
)
SELECT k.id, k.name, k.scopes, k.created_at, k.created_by,
       coalesce((SELECT revoked_at FROM r), k.revoked_at) AS revoked_at,
       CASE WHEN (SELECT revoked_at FROM r) IS NULL THEN k.revoked_by ELSE $2 END AS revoked_by,
       (SELECT revoked_at FROM r) IS NOT NULL AS revoked_now
FROM api_keys k WHERE k.id = $1
"""


def _api_key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        row["id"],
        row["name"],
        tuple(row["scopes"]),
        row["created_at"],
        row["created_by"],
        row["revoked_at"],
        row["revoked_by"],
    )


class KeyStore:
    """The `api_keys` and `api_key_events` tables, over a pool or one connection."""

    def __init__(self, pool: asyncpg.Pool | asyncpg.Connection) -> None:
        self.pool = pool

    async def create(self, *, name: str, scopes: tuple[str, ...], operator: str) -> IssuedKey:
        unknown = set(scopes) - set(SCOPES)
        if unknown or not scopes:
            raise ValueError(f"scopes must be some of {', '.join(SCOPES)}")
        for attempt in range(_CREATE_ATTEMPTS):
            key_id = secrets.token_hex(_ID_BYTES)
            secret = secrets.token_urlsafe(_SECRET_BYTES)
            try:
                created_at = await self.pool.fetchval(
                    _CREATE, key_id, name, secret_digest(secret), list(scopes), operator
                )
            except asyncpg.UniqueViolationError:  # 48 random bits: a clash is rare, not never
                if attempt == _CREATE_ATTEMPTS - 1:
                    raise
                continue
            key = ApiKey(key_id, name, scopes, created_at, operator, None, None)
            return IssuedKey(key, f"acme_{key_id}_{secret}")
        raise AssertionError("unreachable")

    async def revoke(self, key_id: str, *, operator: str, why: str = "") -> tuple[ApiKey, bool]:
        """The key after revocation, and whether this call revoked it (False: it already was).
        Raises LookupError for an unknown id."""
        row = await self.pool.fetchrow(_REVOKE, key_id, operator, why)
        if row is None:
            raise LookupError(key_id)
        return _api_key(row), bool(row["revoked_now"])

    async def keys(self, *, include_revoked: bool = True) -> list[ApiKey]:
        """Every key (or only those not revoked), oldest first."""
        rows = await self.pool.fetch(
            "SELECT id, name, scopes, created_at, created_by, revoked_at, revoked_by"
            " FROM api_keys WHERE $1 OR revoked_at IS NULL ORDER BY created_at",
            include_revoked,
        )
        return [_api_key(row) for row in rows]

    async def secret_of(self, key_id: str) -> StoredSecret | None:
        """The stored hash and scopes of a key, or None when no key has this id."""
        row = await self.pool.fetchrow(
            "SELECT secret_sha256, scopes, revoked_at IS NOT NULL AS revoked FROM api_keys"
            " WHERE id = $1",
            key_id,
        )
        if row is None:
            return None
        return StoredSecret(bytes(row["secret_sha256"]), frozenset(row["scopes"]), row["revoked"])


async def issue_key(
    database_url: str, *, name: str, scopes: tuple[str, ...] = SCOPES, operator: str
) -> str:
    """A new key, over a connection of its own: for `acme up`, the benchmark stacks, the tests."""
    conn = await asyncpg.connect(database_url)
    try:
        issued = await KeyStore(conn).create(name=name, scopes=scopes, operator=operator)
    finally:
        await conn.close()
    return issued.token
