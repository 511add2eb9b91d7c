"""Reading the dead-letter stream in bounded pages: list, scan, fetch.

Every read names a COUNT. An unfiltered listing is one XREVRANGE of the page asked for. Scans
(by reason, by time, by order) go through dead_index.lua, which returns only the few fields a
scan looks at, so passing over tens of thousands of entries does not mean transferring and
parsing their envelopes; the matching entries are then fetched whole, by id.

Before a replay or purge touches anything, `select_dead` chooses what it will touch: named ids
must all exist (else `NotFound`, and nothing is changed: a typo must not turn into a partial
run); otherwise the dead stream is scanned oldest first, by time window and reason class. Only
the few fields the plan needs are kept per entry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any, Final, NamedTuple

import msgspec
from redis.asyncio import Redis

from acme_cli.admin.deadletters import DeadEntry, RawFields, decode_dead_entry
from acme_cli.admin.errors import NotFound
from acme_notify.keys import DEAD_STREAM
from acme_runtime.lua import load_script
from acme_runtime.text import as_text

__all__ = [
    "PAGE_SIZE",
    "DeadPage",
    "IndexEntry",
    "Selected",
    "fetch_dead",
    "list_dead",
    "scan_index",
    "select_dead",
    "selected_of",
]

#: Never ask Redis for more than this many entries in one round trip.
PAGE_SIZE: Final = 500


class DeadPage(msgspec.Struct, frozen=True, kw_only=True):
    entries: list[DeadEntry]
    #: Pass as `--before` for the next (older) page; None once the end was reached.
    next_before: str | None


class IndexEntry(NamedTuple):
    dead_id: str
    reason_class: str
    order_id: str
    replays: int


async def scan_index(
    redis: Redis,
    *,
    lower: str = "-",
    upper: str = "+",
    newest_first: bool = False,
    max_entries: int | None = None,
) -> AsyncIterator[IndexEntry]:
    """Every entry between `lower` and `upper` (ids, `(` for exclusive), a page at a time."""
    script = load_script("dead_index")
    seen = 0
    while max_entries is None or seen < max_entries:
        args: list[str | int] = [lower, upper, PAGE_SIZE, "1" if newest_first else "0"]
        flat: Any = await script.run(redis, [DEAD_STREAM], args)
        for i in range(0, len(flat), 4):
            # Ids are Redis's own ASCII; the fields may hold any bytes a poison message had.
            replays = as_text(flat[i + 3], "replace")
            yield IndexEntry(
                as_text(flat[i]),
                as_text(flat[i + 1], "replace"),
                as_text(flat[i + 2], "replace"),
                int(replays) if replays.isdigit() else 0,
            )
        count = len(flat) // 4
        seen += count
        if count < PAGE_SIZE:
            return
        last = f"({as_text(flat[-4])}"
        upper, lower = (last, lower) if newest_first else (upper, last)


async def fetch_dead(redis: Redis, dead_ids: Collection[str]) -> dict[str, RawFields]:
    """The named entries that exist, in one round trip per page of ids."""
    ids = list(dict.fromkeys(dead_ids))
    found: dict[str, RawFields] = {}
    for start in range(0, len(ids), PAGE_SIZE):
        async with redis.pipeline(transaction=False) as pipe:
            for dead_id in ids[start : start + PAGE_SIZE]:
                pipe.xrange(DEAD_STREAM, dead_id, dead_id)
            replies: list[Any] = await pipe.execute()
        for reply in replies:
            for entry_id, fields in reply:
                if fields:
                    found[as_text(entry_id)] = fields
    return found


async def list_dead(
    redis: Redis,
    *,
    limit: int,
    before: str | None = None,
    since_ms: int | None = None,
    reasons: Collection[str] = (),
    max_scan: int = 50 * PAGE_SIZE,
) -> DeadPage:
    """Up to `limit` entries, newest first, older than `before`, dead since `since_ms`.

    With a reason filter at most `max_scan` entries are examined per call; `next_before` then
    points where the scan stopped, so the next call carries on from there.
    """
    upper = f"({before}" if before else "+"
    lower = "-" if since_ms is None else f"{since_ms}-0"
    if not reasons:
        # One extra entry tells whether an older page exists.
        raw: Any = await redis.xrevrange(DEAD_STREAM, upper, lower, count=limit + 1)
        entries = [decode_dead_entry(as_text(i), f) for i, f in raw[:limit]]
        more = len(raw) > limit
        return DeadPage(entries=entries, next_before=entries[-1].dead_id if more else None)
    matching: list[str] = []
    last_scanned, scanned = None, 0
    async for item in scan_index(
        redis, lower=lower, upper=upper, newest_first=True, max_entries=max_scan
    ):
        last_scanned, scanned = item.dead_id, scanned + 1
        if item.reason_class in reasons:
            matching.append(item.dead_id)
            if len(matching) > limit:
                break
    found = await fetch_dead(redis, matching[:limit])
    entries = [decode_dead_entry(i, found[i]) for i in matching[:limit] if i in found]
    if len(matching) > limit:
        next_before: str | None = matching[limit - 1]
    else:
        next_before = last_scanned if scanned >= max_scan else None
    return DeadPage(entries=entries, next_before=next_before)


class Selected(msgspec.Struct, frozen=True, kw_only=True):
    dead_id: str
    order_id: str | None
    reason_class: str
    replays: int
    #: "stream" or "archive" (selected by acme_cli.admin.archive).
    where: str = "stream"


async def select_dead(
    redis: Redis,
    *,
    ids: Sequence[str] = (),
    reasons: Collection[str] = (),
    since_ms: int | None = None,
    until_ms: int | None = None,
) -> list[Selected]:
    """The entries named (all must exist: NotFound otherwise), or those dead in the window
    whose reason class is one of `reasons` (any, when empty), oldest first."""
    if ids:
        found = await fetch_dead(redis, ids)
        missing = [i for i in ids if i not in found]
        if missing:
            more = f" and {len(missing) - 5} more" if missing[5:] else ""
            raise NotFound(f"no dead entry {', '.join(missing[:5])}{more}; nothing was changed")
        return [selected_of(i, found[i]) for i in dict.fromkeys(ids)]
    lower = "-" if since_ms is None else f"{since_ms}-0"
    upper = "+" if until_ms is None else str(until_ms - 1)  # <ms> alone: its last sequence
    return [
        Selected(
            dead_id=item.dead_id,
            order_id=item.order_id or None,
            reason_class=item.reason_class,
            replays=item.replays,
        )
        async for item in scan_index(redis, lower=lower, upper=upper)
        if not reasons or item.reason_class in reasons
    ]


def selected_of(dead_id: str, fields: dict[bytes, bytes], where: str = "stream") -> Selected:
    """What a replay or purge plan needs of one entry."""
    # envelope={}: the plan needs no e-mail, so the JSON body is not decoded.
    entry = decode_dead_entry(dead_id, fields, envelope={})
    return Selected(
        dead_id=dead_id,
        order_id=entry.order_id,
        reason_class=entry.reason_class,
        replays=entry.replays,
        where=where,
    )
