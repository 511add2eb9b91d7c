"""The API's key check (acme_orders.auth) with a hand-written key store and clock: what is
cached, for how long, how many entries, and what is refused."""

from __future__ import annotations

import pytest

from acme_orders.api_keys import StoredSecret, secret_digest
from acme_orders.auth import Authenticator, Unauthenticated

SECRET = "s" * 43
KEY_ID = "0123456789ab"
TOKEN = f"acme_{KEY_ID}_{SECRET}"


class FakeKeys:
    """`KeyStore.secret_of` over a dict, counting look-ups."""

    def __init__(self) -> None:
        self.rows: dict[str, StoredSecret] = {
            KEY_ID: StoredSecret(secret_digest(SECRET), frozenset({"orders:write"}), False)
        }
        self.lookups = 0

    async def secret_of(self, key_id: str) -> StoredSecret | None:
        self.lookups += 1
        return self.rows.get(key_id)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def authenticator(keys: FakeKeys, clock: Clock, *, max_entries: int = 10_000) -> Authenticator:
    return Authenticator(keys, cache_s=5.0, clock=clock, max_entries=max_entries)


async def test_a_key_is_looked_up_once_per_cache_time() -> None:
    """Many requests within the cache time cost one look-up; the next one after it, another."""
    keys, clock = FakeKeys(), Clock()
    auth = authenticator(keys, clock)
    for _ in range(100):
        caller = await auth.caller(f"Bearer {TOKEN}")
    assert caller.key_id == KEY_ID and caller.scopes == {"orders:write"}
    assert keys.lookups == 1
    clock.now += 5.0
    await auth.caller(f"bearer {TOKEN}")  # the scheme is case-insensitive
    assert keys.lookups == 2


async def test_a_revoked_key_is_refused_once_its_entry_is_stale() -> None:
    """Revocation shows after at most the cache time; before it, the cached row still serves."""
    keys, clock = FakeKeys(), Clock()
    auth = authenticator(keys, clock)
    await auth.caller(f"Bearer {TOKEN}")
    keys.rows[KEY_ID] = StoredSecret(secret_digest(SECRET), frozenset({"orders:write"}), True)
    clock.now += 4.9
    await auth.caller(f"Bearer {TOKEN}")
    clock.now += 0.2
    with pytest.raises(Unauthenticated):
        await auth.caller(f"Bearer {TOKEN}")


@pytest.mark.parametrize(
    ("header", "missing"),
    [
        (None, True),
        ("", True),
        (f"Basic {TOKEN}", False),
        ("Bearer acme_short_x", False),
        (f"Bearer acme_{KEY_ID}_{'t' * 43}", False),  # the right id, a wrong secret
        (f"Bearer acme_{'f' * 12}_{SECRET}", False),  # an id no key has
    ],
)
async def test_what_is_refused(header: str | None, missing: bool) -> None:
    """No header, another scheme, a malformed key, a wrong secret, an unknown id."""
    auth = authenticator(FakeKeys(), Clock())
    with pytest.raises(Unauthenticated) as refused:
        await auth.caller(header)
    assert refused.value.missing is missing


async def test_the_cache_is_bounded() -> None:
    """Past `max_entries` ids (unknown ones included), the stalest entry is dropped."""
    keys, clock = FakeKeys(), Clock()
    auth = authenticator(keys, clock, max_entries=3)
    await auth.caller(f"Bearer {TOKEN}")
    for index in range(3):
        clock.now += 0.1
        with pytest.raises(Unauthenticated):
            await auth.caller(f"Bearer acme_{index:012x}_{SECRET}")
    assert len(auth._cache) == 3 and KEY_ID not in auth._cache
    await auth.caller(f"Bearer {TOKEN}")
    assert keys.lookups == 5
