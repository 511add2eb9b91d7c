"""Names of the notifier's Redis keys, and the shared channels it reads and writes.

Every key carries the `{acme}` hash tag (one Redis Cluster slot), so the Lua scripts that touch
several of them at once stay cluster-safe.
"""

from __future__ import annotations

import hashlib
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
    "HELD_SET",
    "LAST_ERROR_HASH",
    "NOTIFIER_GROUP",
    "REAPER_LOCK",
    "RECEIPTS_STREAM",
    "RECIPIENTS_PREFIX",
    "breaker_key",
    "recipient_field",
    "recipient_windows",
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
#: Sorted set: entry id -> release time (ms) of the pending entries held over their
#: recipient's cap (lua/hold.lua); claim_due.lua claims none before its time.
HELD_SET: Final = f"{HASH_TAG}:notify:held"
#: Prefix of the per-recipient counts (lua/recipient_quota.lua): one hash per fixed window,
#: field = a hash of the address (so no address is readable in the key space), value = e-mails.
RECIPIENTS_PREFIX: Final = f"{HASH_TAG}:notify:recipients:"


def breaker_key(provider: str) -> str:
    """The shared breaker key of an SMTP provider (the primary keeps the historical name, so
    replicas of the previous release share it during a rolling deploy)."""
    return BREAKER_KEY if provider == "primary" else f"{BREAKER_KEY}:{provider}"


def recipient_field(address: str) -> str:
    """The field of a recipient in the window hashes: 64 bits of SHA-256 of the address folded
    to one mailbox (lower case, without a `+tag` subaddress), so `Ana+1@X` and `ana@x` share
    one cap: a bomber cannot slip past it by spelling the address another way; the cost is
    that two mailboxes differing only in case or tag share a cap, which holds e-mails, never
    drops them. 64 bits: two of a few million addresses an hour collide with odds of 1e-6."""
    local, _, domain = address.strip().lower().rpartition("@")
    mailbox = local.split("+", 1)[0] or local
    return hashlib.sha256(f"{mailbox}@{domain}".encode()).hexdigest()[:16]


def recipient_windows(now_ms: int, window_ms: int) -> tuple[str, str, int]:
    """(this window's key, the previous window's key, this window's start in ms)."""
    start = now_ms // window_ms * window_ms
    return f"{RECIPIENTS_PREFIX}{start}", f"{RECIPIENTS_PREFIX}{start - window_ms}", start
