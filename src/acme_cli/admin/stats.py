"""The system's state in one snapshot, for `acme stats`: both streams, dead letters, outbox,
and the e-mail rate. Gathering only; `render_ops` shows it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import msgspec
from redis.asyncio import Redis

from acme_cli.admin.inspect import StreamStats, stream_stats
from acme_cli.admin.parse import ms_to_datetime
from acme_cli.admin.records import OutboxStats, outbox_stats, sent_since
from acme_notify.keys import AUDIT_STREAM, DEAD_STREAM, EVENTS_STREAM, RECEIPTS_STREAM

__all__ = ["DeadStats", "Snapshot", "snapshot"]


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
