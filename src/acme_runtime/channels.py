"""Names of the Redis keys the two services share: the wire contract's addresses.

The events travel on `ACME_STREAM_SHARDS` shards (docs/adr/0023-sharded-streams.md). Every key
of one shard carries that shard's hash tag, so they all live in one Redis Cluster slot and the
Lua scripts, which touch several at once (an event, its receipt, its dead letter), stay
cluster-safe; different shards hash to different slots and so spread over a cluster's masters.
Shard 0's tag is `{acme}`, the one tag there was before shards: with one shard every key keeps
its historical name, and a deployment that grows from 1 to N shards keeps draining the old
stream as shard 0.

An order's event goes to shard `shard_of(order_id, shards)`. Keys that are not about one event
(the SMTP breaker, rate limits, recipient windows) stay on `{acme}` (`GLOBAL_TAG`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Final

from acme_runtime.env import Env

__all__ = [
    "DEAD_STREAM",
    "EVENTS_STREAM",
    "GLOBAL_TAG",
    "HASH_TAG",
    "MAX_SHARDS",
    "NOTIFIER_GROUP",
    "PUBLISHED_PREFIX",
    "RECEIPTS_GROUP",
    "RECEIPTS_STREAM",
    "Shard",
    "StreamShards",
    "StreamShardsRead",
    "published_key",
    "qualify",
    "shard",
    "shard_of",
    "shards",
    "unqualify",
]

#: The hash tag of the keys that belong to no shard, and of shard 0.
GLOBAL_TAG: Final = "{acme}"
HASH_TAG: Final = GLOBAL_TAG
#: More shards than this buys nothing (16384 slots, and every replica reads every shard).
MAX_SHARDS: Final = 256

#: The settings field `stream_shards` of every process (ACME_STREAM_SHARDS), declared once.
StreamShards = Annotated[
    int,
    Env(
        "ACME_STREAM_SHARDS",
        "how many shards the events travel on: each order's event goes to one (by its id), "
        "every notifier replica reads every one; the same value in every process (changing "
        "it: docs/runbook.md, 'Changing the number of shards')",
        minimum=1,
        maximum=MAX_SHARDS,
    ),
]
#: The settings field `stream_shards_read` (ACME_STREAM_SHARDS_READ), declared once.
StreamShardsRead = Annotated[
    int,
    Env(
        "ACME_STREAM_SHARDS_READ",
        "while shrinking ACME_STREAM_SHARDS, the old count: e-mails, receipts and dead letters "
        "are still read from the shards being retired until they have drained (0: the same as "
        "ACME_STREAM_SHARDS)",
        minimum=0,
        maximum=MAX_SHARDS,
    ),
]

#: Consumer group of the notifier replicas on each shard's events stream.
NOTIFIER_GROUP: Final = "notifier"
#: Consumer group of the order service on each shard's receipts stream.
RECEIPTS_GROUP: Final = "orders"


@dataclass(frozen=True)
class Shard:
    """One shard's keys: every one of them in the same Redis Cluster slot."""

    index: int
    tag: str

    @property
    def events(self) -> str:
        """Order notification events (producer: order service; consumer: notifier group)."""
        return f"{self.tag}:events"

    @property
    def receipts(self) -> str:
        """Delivery receipts (producer: notifier; consumer: order service)."""
        return f"{self.tag}:receipts"

    @property
    def dead(self) -> str:
        """Entries moved out of `events` after too many tries or a permanent failure."""
        return f"{self.tag}:dead"

    @property
    def audit(self) -> str:
        """Operator actions on this shard's dead stream (replay, purge): who, when, why."""
        return f"{self.tag}:audit"

    @property
    def published_prefix(self) -> str:
        """Prefix of the publish-once dedupe keys, one per event id."""
        return f"{self.tag}:published:"

    def published_key(self, event_id: str) -> str:
        """The dedupe key that makes publishing event `event_id` on this shard idempotent."""
        return f"{self.published_prefix}{event_id}"

    # The notifier's own keys, per shard (the names are its business, acme_notify.keys).
    @property
    def last_error(self) -> str:
        """entry id -> the last transient error of that pending entry (for the dead letter)."""
        return f"{self.tag}:notify:last-error"

    @property
    def held(self) -> str:
        """entry id -> release time (ms) of entries held over their recipient's cap."""
        return f"{self.tag}:notify:held"

    @property
    def reaper_lock(self) -> str:
        """Held by the replica doing this shard's round of reaping and trimming."""
        return f"{self.tag}:notify:reaper-lock"

    @property
    def archiver_lock(self) -> str:
        """Held by the replica archiving this shard's dead letters; fences their removal."""
        return f"{self.tag}:notify:archiver-lock"

    @property
    def label(self) -> str:
        """How operators name the shard: its index."""
        return str(self.index)


@cache
def shard(index: int) -> Shard:
    """Shard `index`: tag `{acme}` for shard 0 (the historical names), `{acme:i}` after."""
    if not 0 <= index < MAX_SHARDS:
        raise ValueError(f"shard index {index} outside 0..{MAX_SHARDS - 1}")
    return Shard(index, GLOBAL_TAG if index == 0 else f"{{acme:{index}}}")


@cache
def shards(count: int) -> tuple[Shard, ...]:
    """The first `count` shards, the ones a deployment of `ACME_STREAM_SHARDS=count` uses."""
    if not 1 <= count <= MAX_SHARDS:
        raise ValueError(f"shard count {count} outside 1..{MAX_SHARDS}")
    return tuple(shard(i) for i in range(count))


def shard_of(order_id: str, count: int) -> int:
    """The shard of an order's event: CRC-32 of the order id's text, modulo the shard count.
    Stable across processes, releases and languages (no Python `hash`, which is salted)."""
    if count == 1:
        return 0
    return zlib.crc32(order_id.encode()) % count


def qualify(shard_index: int, entry_id: str) -> str:
    """An entry's name across shards (entry ids are unique per stream only): `<shard>/<id>`,
    and the bare id on shard 0, so a one-shard deployment shows the ids it always showed."""
    return entry_id if shard_index == 0 else f"{shard_index}/{entry_id}"


def unqualify(reference: str) -> tuple[int, str]:
    """(shard index, entry id) of a `qualify`d name; ValueError when it is not one."""
    index, slash, entry_id = reference.rpartition("/")
    if not slash:
        return 0, reference
    if not index.isdigit() or not 0 <= int(index) < MAX_SHARDS:
        raise ValueError(f"{reference!r}: the shard before '/' must be 0..{MAX_SHARDS - 1}")
    return int(index), entry_id


_SHARD_0: Final = shard(0)
#: Shard 0's keys under their historical names (the whole key space when there is one shard).
EVENTS_STREAM: Final = _SHARD_0.events
RECEIPTS_STREAM: Final = _SHARD_0.receipts
DEAD_STREAM: Final = _SHARD_0.dead
PUBLISHED_PREFIX: Final = _SHARD_0.published_prefix


def published_key(event_id: str) -> str:
    """Shard 0's dedupe key for `event_id`."""
    return _SHARD_0.published_key(event_id)
