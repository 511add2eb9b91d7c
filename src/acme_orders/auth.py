"""Who is calling: the `Authorization: Bearer <key>` of a request checked against the stored
hash, in constant time, with each key's row cached in the API process.

The cache keeps what `KeyStore.secret_of` answered (the hash and scopes, or "no such key") for
`ACME_API_KEY_CACHE_S`: a busy API asks PostgreSQL about a key once per that time, not once per
request, and a key revoked with `acme keys revoke` stops working within it. It is bounded: past
`max_entries` the entry fetched longest ago goes. No HTTP here: api.py turns `Unauthenticated`
into a 401 and a missing scope into a 403.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from acme_orders.api_keys import StoredSecret, parse_token, secret_digest

__all__ = ["Authenticator", "Caller", "KeyLookup", "Unauthenticated"]

_DEFAULT_MAX_ENTRIES: Final = 10_000


class Unauthenticated(Exception):
    """No key, a malformed one, or one that is unknown or revoked. `missing` is True when the
    request carried no credentials at all (RFC 6750: then the challenge names no error)."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


class KeyLookup(Protocol):
    """What the check needs of the key store (`KeyStore`; a fake in the unit tests)."""

    async def secret_of(self, key_id: str) -> StoredSecret | None: ...


@dataclass(frozen=True)
class Caller:
    """The key a request was made with."""

    key_id: str
    scopes: frozenset[str]


@dataclass(frozen=True)
class _Cached:
    found: StoredSecret | None
    fetched_at: float


class Authenticator:
    def __init__(
        self,
        keys: KeyLookup,
        *,
        cache_s: float,
        db_timeout_s: float = 2.0,
        max_entries: int = _DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._keys = keys
        self._cache_s = cache_s
        self._db_timeout_s = db_timeout_s
        self._max_entries = max_entries
        self._clock = clock
        # Insertion order is fetch order: the first entry is the stalest.
        self._cache: dict[str, _Cached] = {}

    async def caller(self, authorization: str | None) -> Caller:
        """The caller of a request with this `Authorization` header; raises Unauthenticated."""
        if not authorization:
            raise Unauthenticated("Send an API key: `Authorization: Bearer <key>`.", missing=True)
        scheme, _, token = authorization.strip().partition(" ")
        parsed = parse_token(token.strip()) if scheme.lower() == "bearer" else None
        if parsed is None:
            raise Unauthenticated("The Authorization header is not `Bearer <an AcME API key>`.")
        key_id, secret = parsed
        stored = await self._stored(key_id)
        # compare_digest: how long the comparison takes says nothing about the stored hash.
        if (
            stored is None
            or stored.revoked
            or not hmac.compare_digest(stored.digest, secret_digest(secret))
        ):
            raise Unauthenticated("The API key is unknown or revoked.")
        return Caller(key_id, stored.scopes)

    async def _stored(self, key_id: str) -> StoredSecret | None:
        now = self._clock()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached.fetched_at < self._cache_s:
            return cached.found
        async with asyncio.timeout(self._db_timeout_s):
            found = await self._keys.secret_of(key_id)
        self._cache.pop(key_id, None)
        while len(self._cache) >= self._max_entries:
            del self._cache[next(iter(self._cache))]
        self._cache[key_id] = _Cached(found, now)
        return found
