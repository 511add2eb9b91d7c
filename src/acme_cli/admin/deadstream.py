"""Reading the dead-letter streams in bounded pages: list, scan, fetch.

Every read names a COUNT. An unfiltered listing is one XREVRANGE per shard of the page asked
for. Scans (by reason, by time, by order) go through dead_index.lua, which returns only the few
fields a scan looks at, so passing over tens of thousands of entries does not mean transferring
and parsing their envelopes; the matching entries are then fetched whole, by id.

Each shard (acme_runtime.channels) has its own dead stream, and stream ids are unique per stream
only: entries are named across shards by `qualify` (`3/<ms>-<seq>`, the bare id on shard 0, so
a one-shard deployment shows the ids it always showed), and ordered across shards by time
(`acme_notify.dead_archive.id_order`: ms, seq, shard). A listing reads a page of each shard and
merges them (`merge_pages`); a cursor names the entry where the page ended, and each shard
carries on from its own side of it.

Before a replay or purge touches anything, `select_dead` chooses what it will touch: named ids
must all exist (else `NotFound`, and nothing is changed: a typo must not turn into a partial
run); otherwise the dead streams are scanned oldest first, by time window and reason class. Only
the few fields the plan needs are kept per entry.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterable, Sequence
from typing import Any, Final, NamedTuple

import msgspec
from redis.asyncio import Redis

from acme_cli.admin.deadletters import DeadEntry, RawFields, decode_dead_entry
from acme_cli.admin.errors import NotFound
from acme_notify.dead_archive import id_order
from acme_runtime.channels import Shard, qualify, shard, unqualify
from acme_runtime.lua import load_script
from acme_runtime.text import as_text

__all__ = [
    "PAGE_SIZE",
    "DeadPage",
    "IndexEntry",
    "Selected",
    "fetch_dead",
    "list_dead",
    "merge_pages",
    "scan_index",
    "select_dead",
    "selected_of",
]

#: Never ask Redis for more than this many entries in one round trip.
PAGE_SIZE: Final = 500
_SHARD_0: Final = (shard(0),)


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
    on: Shard = _SHARD_0[0],
) -> AsyncIterator[IndexEntry]:
    """Every entry of shard `on`'s dead stream between `lower` and `upper` (its stream ids,
    `(` for exclusive), a page at a time; named by `qualify`."""
    script = load_script("dead_index")
    seen = 0
    while max_entries is None or seen < max_entries:
        args: list[str | int] = [lower, upper, PAGE_SIZE, "1" if newest_first else "0"]
        flat: Any = await script.run(redis, [on.dead], args)
        for i in range(0, len(flat), 4):
            # Ids are Redis's own ASCII; the fields may hold any bytes a poison message had.
            replays = as_text(flat[i + 3], "replace")
            yield IndexEntry(
                qualify(on.index, as_text(flat[i])),
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
    """The named entries (`qualify`d names) that exist, each read from its shard's dead
    stream, in one round trip per page of ids."""
    ids = list(dict.fromkeys(dead_ids))
    found: dict[str, RawFields] = {}
    for start in range(0, len(ids), PAGE_SIZE):
        page = ids[start : start + PAGE_SIZE]
        async with redis.pipeline(transaction=False) as pipe:
            for dead_id in page:
                index, entry_id = unqualify(dead_id)
                pipe.xrange(shard(index).dead, entry_id, entry_id)
            replies: list[Any] = await pipe.execute()
        for dead_id, reply in zip(page, replies, strict=True):
            if reply and reply[0][1]:
                found[dead_id] = reply[0][1]
    return found


def merge_pages(pages: Iterable[DeadPage], limit: int) -> DeadPage:
    """Pages of several sources (shards, the archive), each newest first, as one page.

    An entry named twice keeps its first source's copy. Each source has examined everything
    down to its cursor (`next_before`); below the highest cursor, a source may still hold
    entries that belong between those already read, so the page stops there."""
    merged: dict[str, DeadEntry] = {}
    cursors: list[str] = []
    for page in pages:
        for entry in page.entries:
            merged.setdefault(entry.dead_id, entry)
        if page.next_before is not None:
            cursors.append(page.next_before)
    newest = sorted(merged.values(), key=lambda e: id_order(e.dead_id), reverse=True)
    floor = max(cursors, key=id_order) if cursors else None
    valid = [e for e in newest if floor is None or id_order(e.dead_id) >= id_order(floor)]
    if len(valid) > limit:
        return DeadPage(entries=valid[:limit], next_before=valid[limit - 1].dead_id)
    return DeadPage(entries=valid, next_before=floor)


def _upper(before: str | None, on: Shard) -> str:
    """Shard `on`'s bound for entries older than `before`: time order across shards is
    (ms, seq, shard), so a lower shard keeps an entry with the very same stream id."""
    if before is None:
        return "+"
    index, entry_id = unqualify(before)
    return entry_id if on.index < index else f"({entry_id}"


async def list_dead(
    redis: Redis,
    *,
    limit: int,
    before: str | None = None,
    since_ms: int | None = None,
    reasons: Collection[str] = (),
    max_scan: int = 50 * PAGE_SIZE,
    shards: Sequence[Shard] = _SHARD_0,
) -> DeadPage:
    """Up to `limit` entries of the shards' dead streams, newest first, older than `before`
    (a `qualify`d name), dead since `since_ms`.

    With a reason filter at most `max_scan` entries are examined per call (shared out among
    the shards); `next_before` then points where the scan stopped, so the next call carries on
    from there.
    """
    per_shard_scan = max(PAGE_SIZE, max_scan // len(shards))
    pages = [
        await _list_shard(
            redis, on, limit=limit, before=before, since_ms=since_ms, reasons=reasons,
            max_scan=per_shard_scan,
        )
        for on in shards
    ]  # fmt: skip
    return pages[0] if len(pages) == 1 else merge_pages(pages, limit)


async def _list_shard(
    redis: Redis,
    on: Shard,
    *,
    limit: int,
    before: str | None,
    since_ms: int | None,
    reasons: Collection[str],
    max_scan: int,
) -> DeadPage:
    upper = _upper(before, on)
    lower = "-" if since_ms is None else f"{since_ms}-0"
    if not reasons:
        # One extra entry tells whether an older page exists.
        raw: Any = await redis.xrevrange(on.dead, upper, lower, count=limit + 1)
        entries = [decode_dead_entry(qualify(on.index, as_text(i)), f) for i, f in raw[:limit]]
        more = len(raw) > limit
        return DeadPage(entries=entries, next_before=entries[-1].dead_id if more else None)
    matching: list[str] = []
    last_scanned, scanned = None, 0
    async for item in scan_index(
        redis, lower=lower, upper=upper, newest_first=True, max_entries=max_scan, on=on
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
    shards: Sequence[Shard] = _SHARD_0,
) -> list[Selected]:
    """The entries named (`qualify`d names, on any shard; all must exist: NotFound
    otherwise), or those of the shards' dead streams dead in the window whose reason class is
    one of `reasons` (any, when empty), oldest first across shards."""
    if ids:
        found = await fetch_dead(redis, ids)
        missing = [i for i in ids if i not in found]
        if missing:
            more = f" and {len(missing) - 5} more" if missing[5:] else ""
            raise NotFound(f"no dead entry {', '.join(missing[:5])}{more}; nothing was changed")
        return [selected_of(i, found[i]) for i in dict.fromkeys(ids)]
    lower = "-" if since_ms is None else f"{since_ms}-0"
    upper = "+" if until_ms is None else str(until_ms - 1)  # <ms> alone: its last sequence
    selected = [
        Selected(
            dead_id=item.dead_id,
            order_id=item.order_id or None,
            reason_class=item.reason_class,
            replays=item.replays,
        )
        for on in shards
        async for item in scan_index(redis, lower=lower, upper=upper, on=on)
        if not reasons or item.reason_class in reasons
    ]
    if len(shards) > 1:
        selected.sort(key=lambda s: id_order(s.dead_id))
    return selected


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
