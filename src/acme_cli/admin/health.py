"""Health, gathered (no rendering; `render.stats_view` shows it): one stream and its consumer
groups (`stream_stats`, reusable by metrics exporters), and the system's state in one snapshot
for `acme stats` (both streams, dead letters, outbox and the e-mail rate).

Lag and ages are measured as the notifier's stream probe measures them
(`acme_runtime.consumers`); `lag_capped` says the true lag is at least the reported one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from acme_cli.admin.deadletters import ms_to_datetime
from acme_cli.admin.records import OutboxStats, outbox_stats, sent_since
from acme_notify.keys import AUDIT_STREAM, DEAD_STREAM, EVENTS_STREAM, RECEIPTS_STREAM
from acme_runtime.consumers import LAG_CAP, entry_age_s, group_lag
from acme_runtime.text import as_text

__all__ = [
    "ConsumerStats",
    "DeadStats",
    "GroupStats",
    "Snapshot",
    "StreamStats",
    "snapshot",
    "stream_stats",
]


class ConsumerStats(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    pending: int
    #: Milliseconds since the consumer last read or claimed (a stuck or gone replica grows it).
    idle_ms: int


class GroupStats(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    last_delivered_id: str
    #: Entries not yet delivered to anyone in the group.
    lag: int
    lag_capped: bool
    #: "xinfo" (reported by Redis 7+) or "count" (counted, for Redis 6.2).
    lag_method: str
    #: Delivered but not acknowledged (in flight or waiting for a retry).
    pending: int
    oldest_pending_id: str | None
    #: Age of the oldest pending entry, from its id's time: how late the slowest e-mail is.
    oldest_pending_age_s: float | None
    consumers: list[ConsumerStats]


class StreamStats(msgspec.Struct, frozen=True, kw_only=True):
    stream: str
    length: int
    last_id: str | None
    groups: list[GroupStats]


async def _group(
    redis: Redis, stream: str, group: dict[str, Any], info: dict[str, Any], now_ms: int
) -> GroupStats:
    name = as_text(group["name"])
    # The cap is this module's name, read at each call, so it can be lowered (a test does).
    lag = await group_lag(redis, stream, group, info, cap=LAG_CAP)
    summary: Any = await redis.xpending(stream, name)
    oldest = as_text(summary["min"]) if summary["pending"] else None
    consumers: Any = await redis.xinfo_consumers(stream, name)
    return GroupStats(
        name=name,
        last_delivered_id=as_text(group["last-delivered-id"]),
        lag=lag.entries,
        lag_capped=lag.capped,
        lag_method=lag.method,
        pending=int(summary["pending"]),
        oldest_pending_id=oldest,
        oldest_pending_age_s=None if oldest is None else entry_age_s(oldest, now_ms),
        consumers=[
            ConsumerStats(
                name=as_text(c["name"]), pending=int(c["pending"]), idle_ms=int(c["idle"])
            )
            for c in consumers
        ],
    )


async def stream_stats(redis: Redis, stream: str, now_ms: int) -> StreamStats:
    """The stream's length and, for each consumer group, its lag, pending and consumers."""
    try:
        info: Any = await redis.xinfo_stream(stream)
    except ResponseError as exc:
        if "no such key" not in str(exc).lower():
            raise
        return StreamStats(stream=stream, length=0, last_id=None, groups=[])
    groups: Any = await redis.xinfo_groups(stream)
    last = as_text(info["last-generated-id"])
    return StreamStats(
        stream=stream,
        length=int(info["length"]),
        last_id=None if last == "0-0" else last,
        groups=[await _group(redis, stream, g, info, now_ms) for g in groups],
    )


class DeadStats(msgspec.Struct, frozen=True, kw_only=True):
    length: int
    oldest_at: datetime | None
    newest_at: datetime | None


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    at: datetime
    #: The events stream (group `notifier`) and the receipts stream (group `orders`).
    streams: list[StreamStats]
    dead: DeadStats
    audit_length: int
    outbox: OutboxStats
    sent_last_minute: int


def _entry_time(reply: Any) -> datetime | None:
    if not reply:
        return None
    entry_id = reply[0][0].decode()
    return ms_to_datetime(int(entry_id.partition("-")[0]))


async def snapshot(redis: Redis, pool: asyncpg.Pool, now_ms: int) -> Snapshot:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xlen(DEAD_STREAM)
        pipe.xrange(DEAD_STREAM, "-", "+", count=1)
        pipe.xrevrange(DEAD_STREAM, "+", "-", count=1)
        pipe.xlen(AUDIT_STREAM)
        dead_length, oldest, newest, audit_length = await pipe.execute()
    return Snapshot(
        at=ms_to_datetime(now_ms),
        streams=[
            await stream_stats(redis, EVENTS_STREAM, now_ms),
            await stream_stats(redis, RECEIPTS_STREAM, now_ms),
        ],
        dead=DeadStats(
            length=int(dead_length), oldest_at=_entry_time(oldest), newest_at=_entry_time(newest)
        ),
        audit_length=int(audit_length),
        outbox=await outbox_stats(pool),
        sent_last_minute=await sent_since(pool, 60),
    )
