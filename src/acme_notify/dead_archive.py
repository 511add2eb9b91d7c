"""The archive of the dead stream: `notify.dead_letters` (migrations/0006_dead_letter_archive.sql).

The one home of its SQL. The archiver writes it and expires it; the admin commands read,
replay and purge through it (an operator tool above both services may). A row keeps the whole
dead entry as the stream held it, field by field and in order (`fields`, a flat list of bytes:
name, value, name, value ...), so a poison entry's bytes and a layout-1 entry's repeated names
survive the round trip; the other columns are read from it for filtering.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime
from typing import Any, Final, NamedTuple

import asyncpg

from acme_runtime.channels import unqualify
from acme_runtime.deadletter_layout import REASON_CLASS, REPLAYS, split_dead_fields

__all__ = ["ArchivedEntry", "DeadArchive", "IndexRow", "id_order", "pairs"]

_COLUMNS: Final = "dead_id, archived_at, names, vals"


class ArchivedEntry(NamedTuple):
    dead_id: str
    #: The entry as the dead stream held it: name, value, name, value ...
    fields: list[bytes]
    archived_at: datetime | None = None


class IndexRow(NamedTuple):
    """What selecting archived entries for a replay or purge needs, without the entry."""

    dead_id: str
    reason_class: str
    order_id: str | None
    replays: int


def pairs(fields: Sequence[bytes]) -> dict[bytes, bytes]:
    """The fields as a map, the first of a repeated name winning (as the Lua readers take it)."""
    found: dict[bytes, bytes] = {}
    for i in range(0, len(fields) - 1, 2):
        found.setdefault(fields[i], fields[i + 1])
    return found


def id_order(dead_id: str) -> tuple[int, int, int]:
    """A dead letter's name (`acme_runtime.channels.qualify`: `[<shard>/]<ms>-<seq>`) as a
    sortable triple (ms, seq, shard): time order across shards."""
    shard_index, stream_id = unqualify(dead_id)
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0), shard_index


def _text(value: bytes | None) -> str | None:
    return None if not value else value.decode("utf-8", "replace")


def _row(entry: ArchivedEntry) -> tuple[Any, ...]:
    own, original, _named = split_dead_fields(pairs(entry.fields))
    ms, seq, _shard = id_order(entry.dead_id)
    replays = original.get(REPLAYS.encode(), b"")
    return (
        entry.dead_id,
        ms,
        seq,
        _text(own.get(REASON_CLASS)) or "",
        _text(original.get(b"order_id")),
        _text(original.get(b"event_id")),
        int(replays) if replays.isdigit() else 0,
        entry.fields[0::2],
        entry.fields[1::2],
    )


def _entry(row: asyncpg.Record) -> ArchivedEntry:
    flat = [part for pair in zip(row["names"], row["vals"], strict=True) for part in pair]
    return ArchivedEntry(row["dead_id"], flat, row["archived_at"])


class DeadArchive:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert(self, entries: Sequence[ArchivedEntry]) -> None:
        """Archives the entries in one committed transaction; an id already there is kept."""
        await self._pool.executemany(
            "INSERT INTO notify.dead_letters (dead_id, dead_at, dead_seq, reason_class,"
            " order_id, event_id, replays, names, vals)"
            " VALUES ($1, to_timestamp($2::bigint / 1000.0), $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT (dead_id) DO NOTHING",
            [_row(e) for e in entries],
        )

    async def delete(self, dead_ids: Collection[str]) -> int:
        if not dead_ids:
            return 0
        status: str = await self._pool.execute(
            "DELETE FROM notify.dead_letters WHERE dead_id = ANY($1::text[])", list(dead_ids)
        )
        return int(status.rsplit(" ", 1)[-1])

    async def expire(self, retention_s: int, limit: int) -> int:
        """Deletes up to `limit` rows dead longer than `retention_s` ago, oldest first."""
        status: str = await self._pool.execute(
            "DELETE FROM notify.dead_letters WHERE dead_id IN (SELECT dead_id"
            " FROM notify.dead_letters WHERE dead_at < now() - make_interval(secs => $1)"
            " ORDER BY dead_at, dead_seq LIMIT $2)",
            retention_s,
            limit,
        )
        return int(status.rsplit(" ", 1)[-1])

    async def count(self) -> int:
        total: int = await self._pool.fetchval("SELECT count(*) FROM notify.dead_letters")
        return total

    async def fetch(self, dead_ids: Collection[str]) -> dict[str, ArchivedEntry]:
        rows = await self._pool.fetch(
            "SELECT dead_id, archived_at, names, vals FROM notify.dead_letters"
            " WHERE dead_id = ANY($1::text[])",
            list(dead_ids),
        )
        return {row["dead_id"]: _entry(row) for row in rows}

    async def page(
        self,
        *,
        limit: int,
        before: str | None = None,
        since_ms: int | None = None,
        reasons: Collection[str] = (),
    ) -> list[ArchivedEntry]:
        """Up to `limit` rows, newest first, older than the id `before`, dead since
        `since_ms`, with one of `reasons` (any, when empty)."""
        where, args = _filters(before=before, since_ms=since_ms, reasons=reasons)
        args.append(limit)
        rows = await self._pool.fetch(
            f"SELECT {_COLUMNS} FROM notify.dead_letters WHERE {where}"  # noqa: S608 - fixed fragments, values bound
            f" ORDER BY dead_at DESC, dead_seq DESC LIMIT ${len(args)}",
            *args,
        )
        return [_entry(row) for row in rows]

    async def select(
        self,
        *,
        reasons: Collection[str] = (),
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> list[IndexRow]:
        """Every row dead in [since_ms, until_ms) with one of `reasons`, oldest first."""
        where, args = _filters(since_ms=since_ms, until_ms=until_ms, reasons=reasons)
        rows = await self._pool.fetch(
            "SELECT dead_id, reason_class, order_id, replays FROM notify.dead_letters"  # noqa: S608 - fixed fragments, values bound
            f" WHERE {where} ORDER BY dead_at, dead_seq",
            *args,
        )
        return [
            IndexRow(r["dead_id"], r["reason_class"], r["order_id"], r["replays"]) for r in rows
        ]

    async def take(
        self, dead_id: str, act: Callable[[ArchivedEntry], Awaitable[bool]]
    ) -> bool | None:
        """Runs `act` on the row, locked (a concurrent `take` of it waits), and deletes the
        row when `act` returns True, in one transaction. None when there is no such row.
        `act` does its Redis part before the delete commits, so a crash in between leaves the
        row in place (see docs/runbook.md)."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT dead_id, archived_at, names, vals FROM notify.dead_letters"
                " WHERE dead_id = $1 FOR UPDATE",
                dead_id,
            )
            if row is None:
                return None
            done = await act(_entry(row))
            if done:
                await conn.execute("DELETE FROM notify.dead_letters WHERE dead_id = $1", dead_id)
            return done


def _filters(
    *,
    before: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    reasons: Collection[str] = (),
) -> tuple[str, list[Any]]:
    """A WHERE clause and its arguments ($1 ...); the times are Unix ms."""
    where, args = ["true"], list[Any]()

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    def moment(ms: int) -> str:
        return f"to_timestamp({arg(ms)}::bigint / 1000.0)"

    if before is not None:
        ms, seq, _shard = id_order(before)
        where.append(f"(dead_at, dead_seq) < ({moment(ms)}, {arg(seq)})")
    if since_ms is not None:
        where.append(f"dead_at >= {moment(since_ms)}")
    if until_ms is not None:
        where.append(f"dead_at < {moment(until_ms)}")
    if reasons:
        where.append(f"reason_class = ANY({arg(list(reasons))}::text[])")
    return " AND ".join(where), args
