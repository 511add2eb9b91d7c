"""Names of the notifier's Redis keys, and the shared channels it reads and writes.

Every key carries the `{acme}` hash tag (one Redis Cluster slot), so the Lua scripts that touch
several of them at once stay cluster-safe.
"""

from __future__ import annotations

from typing import Final

from acme_runtime.channels import (
    DEAD_STREAM,
    EVENTS_STREAM,
    HASH_TAG,
    NOTIFIER_GROUP,
    RECEIPTS_STREAM,
)

__all__ = [
    "ARCHIVER_LOCK",
    "AUDIT_STREAM",
    "BREAKER_KEY",
    "DEAD_STREAM",
    "EVENTS_STREAM",
    "LAST_ERROR_HASH",
    "NOTIFIER_GROUP",
    "REAPER_LOCK",
    "RECEIPTS_STREAM",
    "breaker_key",
]

#: entry id -> the last transient error of that pending entry (kept for the dead letter).
LAST_ERROR_HASH: Final = f"{HASH_TAG}:notify:last-error"
#: Set (with a TTL) while SMTP is considered down, so that every replica backs off together:
#: the primary provider's; another provider's is `breaker_key(name)`.
BREAKER_KEY: Final = f"{HASH_TAG}:notify:smtp-breaker"
#: Held (SET NX PX) by the replica doing this round of reaping and trimming.
REAPER_LOCK: Final = f"{HASH_TAG}:notify:reaper-lock"
#: Held (SET NX PX) by the replica moving dead letters to the archive; its token fences the
#: removal from the dead stream (lua/archive_dead.lua), so two archivers never race.
ARCHIVER_LOCK: Final = f"{HASH_TAG}:notify:archiver-lock"
#: Operator actions on the dead stream (replay, purge): who, when, why, which entry. Written
#: by the admin scripts in the same atomic step as the action itself.
AUDIT_STREAM: Final = f"{HASH_TAG}:audit"


def breaker_key(provider: str) -> str:
    """The shared breaker key of an SMTP provider (the primary keeps the historical name, so
    replicas of the previous release share it during a rolling deploy)."""
    return BREAKER_KEY if provider == "primary" else f"{BREAKER_KEY}:{provider}"
