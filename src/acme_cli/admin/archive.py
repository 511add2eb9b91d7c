"""Dead letters wherever they are: the dead stream (Redis) and its archive (PostgreSQL).

The notifier's archiver moves the oldest dead entries to `notify.dead_letters`
(acme_notify/archiver.py); the commands read both and say which (`where`). An entry found in
both (an archiver that crashed between its two steps) is shown from the stream, and the next
archiver round finishes the move.

Reads and selection here; replay and purge of archived entries in archive_actions.py.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from redis.asyncio import Redis

from acme_cli.admin.actions import Outcome
from acme_cli.admin.clients import Clients
from acme_cli.admin.deadletters import DeadDetail, DeadEntry, decode_dead_detail, decode_dead_entry
from acme_cli.admin.deadstream import DeadPage, Selected, fetch_dead, list_dead, select_dead
from acme_cli.admin.deadstream import selected_of as stream_selected
from acme_cli.admin.errors import NotFound
from acme_cli.admin.render import Output
from acme_notify.dead_archive import ArchivedEntry, DeadArchive, id_order

__all__ = [
    "find_dead",
    "forget_archived",
    "list_all",
    "open_archive",
    "select_all",
]

ARCHIVE = "archive"


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


def _newest_first(entries: Sequence[DeadEntry]) -> list[DeadEntry]:
    return sorted(entries, key=lambda e: id_order(e.dead_id), reverse=True)


async def list_all(
    redis: Redis,
    archive: DeadArchive | None,
    *,
    limit: int,
    before: str | None = None,
    since_ms: int | None = None,
    reasons: Collection[str] = (),
) -> DeadPage:
    """`list_dead` over the stream and the archive, merged newest first."""
    stream = await list_dead(redis, limit=limit, before=before, since_ms=since_ms, reasons=reasons)
    if archive is None:
        return stream
    rows = await archive.page(limit=limit + 1, before=before, since_ms=since_ms, reasons=reasons)
    archived = [decode_dead_entry(r.dead_id, _as_map(r), where=ARCHIVE) for r in rows[:limit]]
    in_stream = {e.dead_id for e in stream.entries}
    merged = _newest_first([*stream.entries, *(e for e in archived if e.dead_id not in in_stream)])
    # Each source has examined everything down to its cursor; below the higher of the two,
    # one of them may still hold entries that belong between those already read.
    cursors = [c for c in (stream.next_before, archived[-1].dead_id if rows[limit:] else None) if c]
    floor = max(cursors, key=id_order) if cursors else None
    valid = [e for e in merged if floor is None or id_order(e.dead_id) >= id_order(floor)]
    if len(valid) > limit:
        return DeadPage(entries=valid[:limit], next_before=valid[limit - 1].dead_id)
    return DeadPage(entries=valid, next_before=floor)


async def find_dead(redis: Redis, archive: DeadArchive | None, dead_id: str) -> DeadDetail | None:
    """One entry, from the stream if it is there, else from the archive."""
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
) -> list[Selected]:
    """`select_dead` over the stream and the archive: the ids named (all must exist in one or
    the other), or those dead in the window with one of `reasons`, oldest first."""
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
    selected = await select_dead(redis, reasons=reasons, since_ms=since_ms, until_ms=until_ms)
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
