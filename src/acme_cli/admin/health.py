"""Health, gathered (no rendering; `render.stats_view` shows it): one stream and its consumer
groups (`stream_stats`, reusable by metrics exporters), and the system's state in one snapshot
for `acme stats` (each shard's two streams and dead letters, per shard and in total, the
outbox and the e-mail rate).

Lag and ages are measured as the notifier's stream probe measures them
(`acme_runtime.consumers`); `lag_capped` says the true lag is at least the reported one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Final, TypeVar

import asyncpg
import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from acme_cli.admin.deadletters import ms_to_datetime
from acme_cli.admin.records import OutboxStats, outbox_stats, sent_since
from acme_runtime.channels import NOTIFIER_GROUP, RECEIPTS_GROUP, Shard, shard
from acme_runtime.consumers import LAG_CAP, entry_age_s, group_lag
from acme_runtime.text import as_text

__all__ = [
    "ConsumerStats",
    "DeadStats",
    "GroupStats",
    "ShardStats",
    "Snapshot",
    "StreamStats",
    "snapshot",
    "stream_stats",
]

_SHARD_0: Final = (shard(0),)
#: Shards measured at once: a few connections, however many shards there are.
_CONCURRENCY: Final = 16
_T = TypeVar("_T")


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
    redis: Redis,
    stream: str,
    group: dict[str, Any],
    info: dict[str, Any],
    now_ms: int,
    lag_cap: int,
) -> GroupStats:
    name = as_text(group["name"])
    lag = await group_lag(redis, stream, group, info, cap=lag_cap)
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


async def stream_stats(
    redis: Redis, stream: str, now_ms: int, *, lag_cap: int = LAG_CAP
) -> StreamStats:
    """The stream's length and, for each consumer group, its lag (counted up to `lag_cap`
    where Redis does not report it), pending and consumers."""
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
        groups=[await _group(redis, stream, g, info, now_ms, lag_cap) for g in groups],
    )


class DeadStats(msgspec.Struct, frozen=True, kw_only=True):
    length: int
    oldest_at: datetime | None
    newest_at: datetime | None


class ShardStats(msgspec.Struct, frozen=True, kw_only=True):
    """One shard's events stream as the notifier group sees it, its dead letters and the
    receipts' lag; or the sum over the shards (`shard` None: ages are the oldest, a lag is
    capped when any is)."""

    shard: int | None
    length: int
    #: Entries not delivered to the notifier group yet (all of them while it has no group).
    lag: int
    lag_capped: bool
    pending: int
    oldest_pending_age_s: float | None
    #: Age of the oldest entry no notifier has read yet: how long the backlog has waited.
    oldest_unread_age_s: float | None
    dead: int
    #: Receipts the order service's group has not read yet.
    receipts_lag: int
    receipts_lag_capped: bool


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    at: datetime
    #: Each shard's events stream (group `notifier`) and receipts stream (group `orders`), in
    #: shard order.
    streams: list[StreamStats]
    #: The dead letters of all shards.
    dead: DeadStats
    audit_length: int
    outbox: OutboxStats
    sent_last_minute: int
    #: One row per shard, and their sum.
    shards: list[ShardStats]
    total: ShardStats


def _entry_time(reply: Any) -> datetime | None:
    if not reply:
        return None
    entry_id = reply[0][0].decode()
    return ms_to_datetime(int(entry_id.partition("-")[0]))


def _group_named(stream: StreamStats, name: str) -> GroupStats | None:
    return next((g for g in stream.groups if g.name == name), None)


async def _oldest_unread_age(
    redis: Redis, stream: str, after: str | None, now_ms: int
) -> float | None:
    reply: Any = await redis.xrange(stream, "-" if after is None else f"({after}", "+", count=1)
    return entry_age_s(as_text(reply[0][0]), now_ms) if reply else None


_Measured = tuple[ShardStats, StreamStats, StreamStats]


async def _shard_stats(redis: Redis, on: Shard, dead: int, now_ms: int) -> _Measured:
    events = await stream_stats(redis, on.events, now_ms)
    receipts = await stream_stats(redis, on.receipts, now_ms)
    notifier = _group_named(events, NOTIFIER_GROUP)
    orders = _group_named(receipts, RECEIPTS_GROUP)
    if notifier is None:  # no notifier has read this shard yet: all of it waits
        lag, capped, unread_after = events.length, False, None
    else:
        lag, capped, unread_after = notifier.lag, notifier.lag_capped, notifier.last_delivered_id
    unread = await _oldest_unread_age(redis, on.events, unread_after, now_ms) if lag else None
    row = ShardStats(
        shard=on.index,
        length=events.length,
        lag=lag,
        lag_capped=capped,
        pending=0 if notifier is None else notifier.pending,
        oldest_pending_age_s=None if notifier is None else notifier.oldest_pending_age_s,
        oldest_unread_age_s=unread,
        dead=dead,
        receipts_lag=receipts.length if orders is None else orders.lag,
        receipts_lag_capped=False if orders is None else orders.lag_capped,
    )
    return row, events, receipts


def _oldest(ages: Sequence[float | None]) -> float | None:
    return max((a for a in ages if a is not None), default=None)


def _total(rows: Sequence[ShardStats]) -> ShardStats:
    return ShardStats(
        shard=None,
        length=sum(r.length for r in rows),
        lag=sum(r.lag for r in rows),
        lag_capped=any(r.lag_capped for r in rows),
        pending=sum(r.pending for r in rows),
        oldest_pending_age_s=_oldest([r.oldest_pending_age_s for r in rows]),
        oldest_unread_age_s=_oldest([r.oldest_unread_age_s for r in rows]),
        dead=sum(r.dead for r in rows),
        receipts_lag=sum(r.receipts_lag for r in rows),
        receipts_lag_capped=any(r.receipts_lag_capped for r in rows),
    )


async def _bounded(calls: Sequence[Callable[[], Awaitable[_T]]]) -> list[_T]:
    """The calls' results in order, at most `_CONCURRENCY` running at once."""
    gate = asyncio.Semaphore(_CONCURRENCY)

    async def one(call: Callable[[], Awaitable[_T]]) -> _T:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(call) for call in calls)))


async def snapshot(
    redis: Redis, pool: asyncpg.Pool, now_ms: int, shards: Sequence[Shard] = _SHARD_0
) -> Snapshot:
    async with redis.pipeline(transaction=False) as pipe:
        for on in shards:
            pipe.xlen(on.dead)
            pipe.xrange(on.dead, "-", "+", count=1)
            pipe.xrevrange(on.dead, "+", "-", count=1)
            pipe.xlen(on.audit)
        replies: list[Any] = await pipe.execute()
    dead = [int(n) for n in replies[0::4]]
    oldest = [t for t in map(_entry_time, replies[1::4]) if t is not None]
    newest = [t for t in map(_entry_time, replies[2::4]) if t is not None]

    def measure(on: Shard, dead: int) -> Callable[[], Awaitable[_Measured]]:
        return lambda: _shard_stats(redis, on, dead, now_ms)

    measured = await _bounded([measure(on, n) for on, n in zip(shards, dead, strict=True)])
    rows = [row for row, _events, _receipts in measured]
    return Snapshot(
        at=ms_to_datetime(now_ms),
        streams=[s for _row, events, receipts in measured for s in (events, receipts)],
        dead=DeadStats(
            length=sum(dead),
            oldest_at=min(oldest, default=None),
            newest_at=max(newest, default=None),
        ),
        audit_length=sum(int(n) for n in replies[3::4]),
        outbox=await outbox_stats(pool),
        sent_last_minute=await sent_since(pool, 60),
        shards=rows,
        total=_total(rows),
    )
