"""Replay and purge: the only writes the admin commands make, each one Lua script per entry.

Per entry, replay_dead.lua moves the original fields back onto the events stream (a new entry:
a fresh delivery budget), deletes the dead entry and writes the audit record, atomically; so
an interrupted run (Ctrl-C, a killed pod, a dropped connection) leaves every entry in exactly
one of the two streams, and re-running it carries on. Scripts are pipelined a page at a time
for speed; atomicity is per script, which is per entry. A `stop` event ends a run between two
pages (see interrupt.py), so what was done is known exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from redis.asyncio import Redis

from acme_notify.keys import AUDIT_STREAM, DEAD_STREAM, EVENTS_STREAM
from acme_runtime.clock import now_ms
from acme_runtime.lua import Script, load_script
from acme_runtime.text import as_text

__all__ = ["Outcome", "Progress", "purge", "replay"]

#: Scripts per pipeline round trip: fast, yet a Ctrl-C stops within one page.
PIPELINE_PAGE: Final = 100

Args = Sequence[str | int]


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What happened to one dead entry."""

    dead_id: str
    #: Filled in by the caller, which knows it from the selection.
    order_id: str | None = None
    #: replay: replayed, capped (over the replay cap), not_found (gone meanwhile),
    #: not_dead_letter (not in dead_letter.lua's layout), empty (no original fields);
    #: purge: purged, not_found.
    status: str
    #: The new events-stream entry of a replay; None otherwise.
    new_id: str | None = None
    #: Replays of the event so far (after this one, if it was replayed).
    replays: int = 0


@dataclass
class Progress:
    """Outcomes so far: the caller can report them even if the run is interrupted."""

    outcomes: list[Outcome] = field(default_factory=list)
    #: The stop event was set: the run ended early, between two pages.
    stopped: bool = False

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


async def _run_pages(
    redis: Redis,
    script: Script,
    keys: Sequence[str],
    per_entry: Sequence[Args],
    progress: Progress,
    stop: asyncio.Event | None,
) -> AsyncIterator[tuple[Sequence[Args], list[Any]]]:
    """Runs `script` once per argument list, a pipeline page at a time; yields each page's
    arguments with the scripts' replies. Stops between pages once `stop` is set."""

    await script.ensure_loaded(redis)
    for start in range(0, len(per_entry), PIPELINE_PAGE):
        if stop is not None and stop.is_set():
            progress.stopped = True
            return
        batch = per_entry[start : start + PIPELINE_PAGE]
        # A SCRIPT FLUSH or a restart mid-run reloads it: every admin script is re-runnable.
        replies = await script.run_many(redis, [(keys, args) for args in batch])
        yield batch, replies


async def replay(
    redis: Redis,
    dead_ids: Sequence[str],
    *,
    cap: int,
    force: bool,
    who: str,
    why: str,
    audit_maxlen: int,
    progress: Progress,
    stop: asyncio.Event | None = None,
) -> Progress:
    """Replays the entries in order; `progress` fills in as pages complete."""
    at = now_ms()
    args: list[Args] = [
        [i, cap, "1" if force else "0", at, who, why, audit_maxlen] for i in dead_ids
    ]
    keys = [DEAD_STREAM, EVENTS_STREAM, AUDIT_STREAM]
    async for batch, replies in _run_pages(
        redis, load_script("replay_dead"), keys, args, progress, stop
    ):
        for entry_args, (status, new_id, replays) in zip(batch, replies, strict=True):
            progress.outcomes.append(
                Outcome(
                    dead_id=str(entry_args[0]),
                    status=as_text(status),
                    new_id=as_text(new_id) or None,
                    replays=int(replays),
                )
            )
    return progress


async def purge(
    redis: Redis,
    dead_ids: Sequence[str],
    *,
    who: str,
    why: str,
    audit_maxlen: int,
    progress: Progress,
    stop: asyncio.Event | None = None,
) -> Progress:
    """Deletes the entries, each with its audit record; `progress` fills in as it goes."""
    at = now_ms()
    args: list[Args] = [[i, at, who, why, audit_maxlen] for i in dead_ids]
    keys = [DEAD_STREAM, AUDIT_STREAM]
    async for batch, replies in _run_pages(
        redis, load_script("purge_dead"), keys, args, progress, stop
    ):
        for entry_args, deleted in zip(batch, replies, strict=True):
            status = "purged" if int(deleted) else "not_found"
            progress.outcomes.append(Outcome(dead_id=str(entry_args[0]), status=status))
    return progress
