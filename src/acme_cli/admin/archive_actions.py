"""Replay and purge of archived dead letters (`notify.dead_letters`), one entry at a time.

A replay restores the entry into the dead stream and runs replay_dead.lua on it in one
MULTI/EXEC (the same cap, audit record and `replays` + 1 as any replay), then deletes the
archive row; the row stays locked (SELECT ... FOR UPDATE) meanwhile, so two operators cannot
replay it twice. A crash after the Redis step and before the row's delete commits leaves the
row: the event was replayed and the archive still shows it; a second replay would not send a
second e-mail if the first was sent (the send ledger). A purge writes the audit record, then
deletes the row: a crash in between leaves an audit record and the row, never a silent
deletion.

An archived entry belongs to the shard its name says (`3/<ms>-<seq>`, acme_runtime.channels):
it is restored into that shard's dead stream and replayed onto that shard's events stream,
and its audit records go to that shard's audit stream, so each MULTI/EXEC (and its WATCH)
stays within one Redis Cluster slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError, WatchError

from acme_cli.admin.actions import Outcome, Progress
from acme_cli.admin.archive import ARCHIVE
from acme_notify.dead_archive import ArchivedEntry, DeadArchive, id_order, pairs
from acme_runtime.channels import Shard, qualify, shard, unqualify
from acme_runtime.clock import now_ms
from acme_runtime.deadletter_layout import LAYOUT, LAYOUT_VERSION, ORIGINAL_ID, REPLAYS
from acme_runtime.lua import load_script
from acme_runtime.text import as_text

__all__ = ["Acting", "purge_archived", "replay_archived"]


class Acting(NamedTuple):
    """Who acts and why (the audit records), and the event that stops a run between entries;
    `_asdict()` gives them as actions.replay and actions.purge take them."""

    who: str
    why: str
    audit_maxlen: int
    stop: asyncio.Event | None = None


def _until_stopped(
    dead_ids: Sequence[str], progress: Progress, stop: asyncio.Event | None
) -> Iterator[str]:
    """The ids, one by one, until `stop` is set (then `progress.stopped`)."""
    for dead_id in dead_ids:
        if stop is not None and stop.is_set():
            progress.stopped = True
            return
        yield dead_id


def _refusal(entry: ArchivedEntry, cap: int, force: bool) -> tuple[str | None, int]:
    """What replay_dead.lua would refuse the entry for (None: it would replay), and its
    replays so far; checked before restoring it, so a refusal leaves the archive as it was."""
    f = entry.fields
    named = f[:2] == [LAYOUT.encode(), LAYOUT_VERSION.encode()]
    if not named and f[:1] != [ORIGINAL_ID.encode()]:
        return "not_dead_letter", 0
    text = as_text(pairs(f).get(REPLAYS.encode(), b""), "replace")
    replays = int(text) if text.isdigit() else 0
    return ("capped" if replays >= cap and not force else None), replays


async def _last_id(pipe: Pipeline, dead: str) -> str:
    try:
        info: Any = await pipe.xinfo_stream(dead)
    except ResponseError:  # no dead stream at all
        return "0-0"
    return as_text(info["last-generated-id"])


async def _restore_and_replay(
    redis: Redis, on: Shard, fields: Sequence[bytes], args: Sequence[str | int]
) -> tuple[str, list[Any]]:
    """XADDs the fields to shard `on`'s dead stream and replays them with replay_dead.lua, in
    one MULTI/EXEC: both or neither. The id is chosen here (XADD * would be known only after
    EXEC), above the stream's last one; WATCH retries if another write took it first."""
    keys = [on.dead, on.events, on.audit]
    # EVAL, not EVALSHA: a NOSCRIPT inside EXEC would leave the restored entry behind.
    source = load_script("replay_dead").source
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(on.dead)
                ms, seq, _shard = id_order(await _last_id(pipe, on.dead))
                now = now_ms()
                restored = f"{now}-0" if now > ms else f"{ms}-{seq + 1}"
                pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
                pipe.execute_command("XADD", on.dead, restored, *fields)
                pipe.eval(source, len(keys), *keys, restored, *args)
                _added, reply = await pipe.execute(raise_on_error=False)
            except WatchError:
                continue
            if isinstance(reply, Exception):
                await redis.xdel(on.dead, restored)
                raise reply
            return restored, reply


async def replay_archived(
    redis: Redis,
    archive: DeadArchive,
    dead_ids: Sequence[str],
    *,
    cap: int,
    force: bool,
    acting: Acting,
    progress: Progress,
) -> Progress:
    """Replays archived entries one by one (see the module's docstring), each on its own
    shard; the audit record names the id the entry was restored under, and `why` says which
    archived entry it was."""
    at, (who, why, audit_maxlen, stop) = now_ms(), acting
    for dead_id in _until_stopped(dead_ids, progress, stop):
        outcome = Outcome(dead_id=dead_id, status="not_found")
        on = shard(unqualify(dead_id)[0])

        async def act(entry: ArchivedEntry, dead_id: str = dead_id, on: Shard = on) -> bool:
            nonlocal outcome
            refused, replays = _refusal(entry, cap, force)
            if refused is not None:
                outcome = Outcome(dead_id=dead_id, status=refused, replays=replays)
                return False
            note = f"{why} (archived dead letter {dead_id})".strip()
            args = [cap, "1" if force else "0", at, who, note, audit_maxlen]
            restored, (status, new_id, count) = await _restore_and_replay(
                redis, on, entry.fields, args
            )
            new = as_text(new_id)
            outcome = Outcome(
                dead_id=dead_id,
                status=as_text(status),
                new_id=qualify(on.index, new) if new else None,
                replays=int(count),
            )
            if outcome.status != "replayed":  # refused after all: the archive keeps it
                await redis.xdel(on.dead, restored)
            return outcome.status == "replayed"

        await archive.take(dead_id, act)
        progress.outcomes.append(outcome)
    return progress


async def purge_archived(
    redis: Redis,
    archive: DeadArchive,
    dead_ids: Sequence[str],
    *,
    acting: Acting,
    progress: Progress,
) -> Progress:
    """Deletes archived entries, each with an audit record as purge_dead.lua writes it (on
    the entry's shard, naming it by its stream id there), plus `where` = archive."""
    at, (who, why, audit_maxlen, stop) = now_ms(), acting
    for dead_id in _until_stopped(dead_ids, progress, stop):
        index, stream_id = unqualify(dead_id)

        async def act(
            entry: ArchivedEntry, stream_id: str = stream_id, audit: str = shard(index).audit
        ) -> bool:
            f = pairs(entry.fields)  # the first of each name, as purge_dead.lua takes it
            record: dict[str, str | bytes] = {
                "action": "purge",
                "at_ms": str(at),
                "who": who,
                "why": why,
                "dead_id": stream_id,
                "event_id": f.get(b"event_id", b""),
                "order_id": f.get(b"order_id", b""),
                "reason_class": f.get(b"reason_class", b""),
                "replays": f.get(REPLAYS.encode(), b"0"),
                "where": ARCHIVE,
            }
            await redis.xadd(audit, record, maxlen=audit_maxlen, approximate=True)  # type: ignore[arg-type]
            return True

        taken = await archive.take(dead_id, act)
        progress.outcomes.append(
            Outcome(dead_id=dead_id, status="purged" if taken else "not_found")
        )
    return progress
