"""Dead letters wherever they are: the shards' dead streams (Redis) and their archive
(PostgreSQL).

The notifier's archivers move the oldest dead entries of each shard to `notify.dead_letters`
(acme_notify/archiver.py), under the same `qualify`d names the commands show; the commands read
both and say which (`where`). An entry found in both (an archiver that crashed between its two
steps) is shown from the stream, and the next archiver round finishes the move.

Reads and selection here; replay and purge of archived entries in archive_actions.py.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Final

from redis.asyncio import Redis

from acme_cli.admin.actions import Outcome
from acme_cli.admin.clients import Clients
from acme_cli.admin.deadletters import DeadDetail, decode_dead_detail, decode_dead_entry
from acme_cli.admin.deadstream import (
    DeadPage,
    Selected,
    fetch_dead,
    list_dead,
    merge_pages,
    select_dead,
)
from acme_cli.admin.deadstream import selected_of as stream_selected
from acme_cli.admin.errors import NotFound
from acme_cli.admin.render import Output
from acme_notify.dead_archive import ArchivedEntry, DeadArchive, id_order
from acme_runtime.channels import MAX_SHARDS, Shard, shard

__all__ = [
    "find_dead",
    "forget_archived",
    "list_all",
    "open_archive",
    "select_all",
]

ARCHIVE = "archive"
_SHARD_0: Final = (shard(0),)


def open_archive(clients: Clients, out: Output) -> DeadArchive | None:
    """The archive when the command has PostgreSQL; else None, and a note saying so."""
    if clients.pool_client is None:
        out.note(
            f"acme: {clients.postgres_missing or 'no PostgreSQL'}: only the dead stream was "
            "read, not the archive of older dead letters in PostgreSQL"
        )
        return None
    return DeadArchive(clients.pool_client)


async def forget_archived(archive: DeadArchive | None, outcomes: Sequence[Outcome]) -> None:
    """Deletes the archive rows of stream entries just replayed or purged: a copy left by an
    archiver that crashed between its two steps must not outlive the entry."""
    done = [o.dead_id for o in outcomes if o.status in ("replayed", "purged")]
    if archive is not None and done:
        await archive.delete(done)


def _as_map(entry: ArchivedEntry) -> dict[bytes, bytes]:
    # As redis-py reads a stream entry (a repeated name keeps its last value).
    f = entry.fields
    return {f[i]: f[i + 1] for i in range(0, len(f) - 1, 2)}


def _moment(dead_id: str) -> tuple[int, int]:
    ms, seq, _shard = id_order(dead_id)
    return ms, seq


async def _archive_page(
    archive: DeadArchive,
    *,
    limit: int,
    before: str | None,
    since_ms: int | None,
    reasons: Collection[str],
) -> DeadPage:
    """A page of the archive, with its cursor as `merge_pages` takes it.

    The archive orders its rows by moment (ms, seq) only, and entries of several shards may
    share one. So the rows of the `before` entry's moment are read too, and those not before
    it (by shard) left out; and a full page leaves out its last moment, which may go on
    beyond the page. A page left with nothing is read again bigger (no more rows than shards
    share a moment), so the cursor always moves on."""
    bound = None
    if before is not None:
        ms, seq = _moment(before)
        bound = f"{ms}-{seq + 1}"
    size = limit + 1
    while True:
        rows = await archive.page(limit=size, before=bound, since_ms=since_ms, reasons=reasons)
        full, last = len(rows) == size, _moment(rows[-1].dead_id) if rows else (0, 0)
        if before is not None:
            rows = [r for r in rows if id_order(r.dead_id) < id_order(before)]
        if not full:
            floor = None
            break
        rows = [r for r in rows if _moment(r.dead_id) > last]
        if rows:
            floor = min((r.dead_id for r in rows), key=id_order)
            break
        size += MAX_SHARDS
    entries = [decode_dead_entry(r.dead_id, _as_map(r), where=ARCHIVE) for r in rows]
    return DeadPage(entries=entries, next_before=floor)


async def list_all(
    redis: Redis,
    archive: DeadArchive | None,
    *,
    limit: int,
    before: str | None = None,
    since_ms: int | None = None,
    reasons: Collection[str] = (),
    shards: Sequence[Shard] = _SHARD_0,
) -> DeadPage:
    """`list_dead` over the shards' streams and the archive, merged newest first."""
    stream = await list_dead(
        redis, limit=limit, before=before, since_ms=since_ms, reasons=reasons, shards=shards
    )
    if archive is None:
        return stream
    archived = await _archive_page(
        archive, limit=limit, before=before, since_ms=since_ms, reasons=reasons
    )
    # The stream's copy first: an entry in both is shown from the stream.
    return merge_pages([stream, archived], limit)


async def find_dead(redis: Redis, archive: DeadArchive | None, dead_id: str) -> DeadDetail | None:
    """One entry (a `qualify`d name), from its shard's stream if it is there, else from the
    archive."""
    found = await fetch_dead(redis, [dead_id])
    if dead_id in found:
        return decode_dead_detail(dead_id, found[dead_id])
    rows = {} if archive is None else await archive.fetch([dead_id])
    if dead_id not in rows:
        return None
    row = rows[dead_id]
    return decode_dead_detail(dead_id, _as_map(row), where=ARCHIVE, archived_at=row.archived_at)


async def select_all(
    redis: Redis,
    archive: DeadArchive | None,
    *,
    ids: Sequence[str] = (),
    reasons: Collection[str] = (),
    since_ms: int | None = None,
    until_ms: int | None = None,
    shards: Sequence[Shard] = _SHARD_0,
) -> list[Selected]:
    """`select_dead` over the shards' streams and the archive: the ids named (all must exist
    in one or the other), or those dead in the window with one of `reasons`, oldest first."""
    if ids:
        wanted = list(dict.fromkeys(ids))
        in_stream = await fetch_dead(redis, wanted)
        rest = [i for i in wanted if i not in in_stream]
        in_archive = await archive.fetch(rest) if archive is not None and rest else {}
        missing = [i for i in rest if i not in in_archive]
        if missing:
            more = f" and {len(missing) - 5} more" if missing[5:] else ""
            raise NotFound(f"no dead entry {', '.join(missing[:5])}{more}; nothing was changed")
        return [
            stream_selected(i, in_stream[i])
            if i in in_stream
            else stream_selected(i, _as_map(in_archive[i]), ARCHIVE)
            for i in wanted
        ]
    selected = await select_dead(
        redis, reasons=reasons, since_ms=since_ms, until_ms=until_ms, shards=shards
    )
    if archive is None:
        return selected
    stream_ids = {s.dead_id for s in selected}
    rows = await archive.select(reasons=reasons, since_ms=since_ms, until_ms=until_ms)
    selected += [
        Selected(
            dead_id=r.dead_id,
            order_id=r.order_id,
            reason_class=r.reason_class,
            replays=r.replays,
            where=ARCHIVE,
        )
        for r in rows
        if r.dead_id not in stream_ids
    ]
    return sorted(selected, key=lambda s: id_order(s.dead_id))
