"""Names of the notifier's Redis keys, and the shared channels it reads and writes.

The keys about events live per shard (`acme_runtime.channels.Shard`: its stream, dead stream,
last errors, held set and locks share the shard's hash tag, one Redis Cluster slot, so the Lua
scripts that touch several of them at once stay cluster-safe); the names below without a shard
are shard 0's. The breaker and the recipient windows are about a provider or an address, not an
event: they stay on the global `{acme}` tag.
"""

from __future__ import annotations

import hashlib
from typing import Final

from acme_runtime.channels import (
    DEAD_STREAM,
    EVENTS_STREAM,
    GLOBAL_TAG,
    NOTIFIER_GROUP,
    RECEIPTS_STREAM,
    shard,
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

_SHARD_0: Final = shard(0)
LAST_ERROR_HASH: Final = _SHARD_0.last_error
REAPER_LOCK: Final = _SHARD_0.reaper_lock
ARCHIVER_LOCK: Final = _SHARD_0.archiver_lock
AUDIT_STREAM: Final = _SHARD_0.audit
HELD_SET: Final = _SHARD_0.held
#: Set (with a TTL) while SMTP is considered down, so that every replica backs off together:
#: the primary provider's; another provider's is `breaker_key(name)`.
BREAKER_KEY: Final = f"{GLOBAL_TAG}:notify:smtp-breaker"
#: Prefix of the per-recipient counts (lua/recipient_quota.lua): one hash per fixed window,
#: field = a hash of the address (so no address is readable in the key space), value = e-mails.
RECIPIENTS_PREFIX: Final = f"{GLOBAL_TAG}:notify:recipients:"


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
