"""Consumer groups, shared by the notifier, the receipts consumer and the admin CLI.

This module owns what every group needs whoever reads it: creating it idempotently
(`ensure_group`), measuring how far behind it is (`group_lag`, `entry_age_s`) and removing
members that left (`prune_consumers`).

Lag, the entries a group has not been delivered yet, comes from XINFO GROUPS' `lag` where the
server has it (Redis 7+). Redis 6.2 (the embedded one) has no such field, so there it is
counted: nothing when the group has read up to the stream's last id, the whole length when it
has read nothing still present (both known only from XINFO STREAM), else stream_lag.lua counts
the entries after the group's last-delivered-id inside the server, up to a cap, so a huge
backlog never stalls Redis (`capped` then says the true lag is at least that).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple

import structlog
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from acme_runtime.lua import load_script
from acme_runtime.text import as_text

__all__ = ["LAG_CAP", "GroupLag", "ensure_group", "entry_age_s", "group_lag", "prune_consumers"]

log = structlog.get_logger(__name__)

#: Counting lag stops here: beyond it the exact number changes no decision.
LAG_CAP: Final = 100_000


class GroupLag(NamedTuple):
    #: Entries not yet delivered to anyone in the group (at least this many when `capped`).
    entries: int
    capped: bool
    #: "xinfo" (reported by Redis 7+) or "count" (counted, for Redis 6.2).
    method: str


async def ensure_group(redis: Redis, stream: str, group: str) -> bool:
    """Creates the consumer group (and the stream) unless it exists: idempotent. A new group
    reads from the start of whatever the stream holds. True when it was created now."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
        return False
    log.info("consumer_group_created", stream=stream, group=group)
    return True


def _key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def entry_age_s(entry_id: str, now_ms: int) -> float:
    """Seconds since the entry was added, from the time its id carries (never negative)."""
    return max(0.0, (now_ms - _key(entry_id)[0]) / 1000)


async def group_lag(
    redis: Redis,
    stream: str,
    group: Mapping[str, Any],
    info: Mapping[str, Any] | None = None,
    *,
    cap: int = LAG_CAP,
) -> GroupLag:
    """The lag of `group` (its entry in XINFO GROUPS); `info` (XINFO STREAM), when the caller
    has it, spares counting a group that has read everything, or nothing still present."""
    reported = group.get("lag")
    if reported is not None:
        return GroupLag(int(reported), False, "xinfo")
    delivered = as_text(group["last-delivered-id"])
    if info is not None:
        first = info.get("first-entry")
        if int(info["length"]) == 0 or _key(delivered) >= _key(as_text(info["last-generated-id"])):
            return GroupLag(0, False, "count")
        if first is not None and _key(delivered) < _key(as_text(first[0])):
            return GroupLag(int(info["length"]), False, "count")
    counted, capped = await load_script("stream_lag").run(redis, [stream], [delivered, cap])
    return GroupLag(int(counted), bool(capped), "count")


async def prune_consumers(
    redis: Redis, stream: str, group: str, *, min_idle_ms: int, keep: str = "", only: str = ""
) -> list[str]:
    """Deletes the group's consumers with no pending entries, idle for `min_idle_ms`; `keep`
    is never deleted, and `only` limits it to one name (a replica leaving removes itself)."""
    deleted = await load_script("prune_consumers").run(
        redis, [stream], [group, min_idle_ms, keep, only]
    )
    return [as_text(name) for name in deleted]
