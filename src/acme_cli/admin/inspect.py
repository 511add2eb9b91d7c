"""Health of a Redis stream and its consumer groups: length, lag, pending, consumers.

Gathering only (no rendering), reusable by metrics exporters. Lag, the entries a group has not
read yet, comes from XINFO GROUPS' `lag` where the server has it (Redis 7+). Redis 6.2 has no
such field, so there it is counted: nothing when the group has read up to the stream's last
id, the whole length when it has read nothing still present, else stream_lag.lua counts the
entries after the group's last-delivered-id inside the server, up to a cap (`lag_capped`
then says the true lag is at least that).
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from acme_runtime.lua import load_script

__all__ = ["ConsumerStats", "GroupStats", "StreamStats", "stream_stats"]

#: Counting lag stops here: beyond it the exact number changes no decision.
LAG_CAP: Final = 100_000


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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def _lag(
    redis: Redis, stream: str, group: dict[str, Any], info: dict[str, Any]
) -> tuple[int, bool, str]:
    reported = group.get("lag")
    if reported is not None:
        return int(reported), False, "xinfo"
    delivered = _text(group["last-delivered-id"])
    last = _text(info["last-generated-id"])
    first = info.get("first-entry")
    if int(info["length"]) == 0 or _key(delivered) >= _key(last):
        return 0, False, "count"
    if first is not None and _key(delivered) < _key(_text(first[0])):
        return int(info["length"]), False, "count"
    # The same script as the notifier's stream probe (acme_notify/probe.py): one way to count.
    counted, capped = await load_script("stream_lag").run(redis, [stream], [delivered, LAG_CAP])
    return int(counted), bool(capped), "count"


async def _group(
    redis: Redis, stream: str, group: dict[str, Any], info: dict[str, Any], now_ms: int
) -> GroupStats:
    name = _text(group["name"])
    lag, capped, method = await _lag(redis, stream, group, info)
    summary: Any = await redis.xpending(stream, name)
    oldest = _text(summary["min"]) if summary["pending"] else None
    consumers: Any = await redis.xinfo_consumers(stream, name)
    return GroupStats(
        name=name,
        last_delivered_id=_text(group["last-delivered-id"]),
        lag=lag,
        lag_capped=capped,
        lag_method=method,
        pending=int(summary["pending"]),
        oldest_pending_id=oldest,
        oldest_pending_age_s=None if oldest is None else max(0, now_ms - _key(oldest)[0]) / 1000,
        consumers=[
            ConsumerStats(name=_text(c["name"]), pending=int(c["pending"]), idle_ms=int(c["idle"]))
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
    last = _text(info["last-generated-id"])
    return StreamStats(
        stream=stream,
        length=int(info["length"]),
        last_id=None if last == "0-0" else last,
        groups=[await _group(redis, stream, g, info, now_ms) for g in groups],
    )
