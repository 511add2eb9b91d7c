"""Replay and purge, the only writes the admin commands make, and their audit trail read back.

Per entry, replay_dead.lua moves the original fields back onto the events stream (a new entry:
a fresh delivery budget), deletes the dead entry and writes the audit record, atomically; so
an interrupted run (Ctrl-C, a killed pod, a dropped connection) leaves every entry in exactly
one of the two streams, and re-running it carries on. Scripts are pipelined a page at a time
for speed; atomicity is per script, which is per entry. A `stop` event ends a run between two
pages, so what was done is known exactly.

Ctrl-C during a run: finish the page in flight, then stop and say how far. The first SIGINT or
SIGTERM (a closed `kubectl exec` session sends one) only sets the `stop` event that the write
loop checks between pages (`stop_on_signal`), so the run stops at a known point and reports
exactly what it did. A second signal leaves at once. Relying on task cancellation instead is
not enough on Python 3.11: redis-py sends through `asyncio.wait_for`, which there can swallow a
cancellation that arrives while a command is being written, and the run would go on.

Each entry is acted on with its own shard's keys (its dead, events and audit streams: one
Redis Cluster slot per script). replay_dead.lua and purge_dead.lua write the audit records in
the same atomic step as the action, on that shard's audit stream, so the trail can never
disagree with the streams; `find_audit` reads them back, from every shard, and names the
entries the records speak of as `acme dead list` does (`qualify`).
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import msgspec
from redis.asyncio import Redis

from acme_cli.admin.deadletters import ms_to_datetime
from acme_notify.dead_archive import id_order
from acme_runtime.channels import Shard, qualify, shard, unqualify
from acme_runtime.clock import now_ms
from acme_runtime.lua import Script, load_script
from acme_runtime.text import as_text

__all__ = [
    "AuditRecord",
    "Outcome",
    "Progress",
    "decode_audit",
    "find_audit",
    "purge",
    "replay",
    "stop_on_signal",
]

#: Scripts per pipeline round trip: fast, yet a Ctrl-C stops within one page.
PIPELINE_PAGE: Final = 100

_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: Audit records read per round trip.
_AUDIT_PAGE = 500

Args = Sequence[str | int]
Call = tuple[Sequence[str], Args]
_SHARD_0: Final = (shard(0),)


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What happened to one dead entry."""

    dead_id: str
    #: Filled in by the caller, which knows it from the selection.
    order_id: str | None = None
    #: replay: replayed, capped (over the replay cap), not_found (gone meanwhile),
    #: not_dead_letter (not in dead_letter.lua's layout), empty (no original fields);
    #: purge: purged, not_found.
    status: str
    #: The new events-stream entry of a replay (`qualify`d: on the dead entry's shard); None
    #: otherwise.
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
    dead_ids: Sequence[str],
    call: Callable[[Shard, str], Call],
    progress: Progress,
    stop: asyncio.Event | None,
) -> AsyncIterator[list[tuple[str, Any]]]:
    """Runs `script` once per entry (`call(its shard, its stream id)` gives the keys and
    arguments), a pipeline page at a time; yields each page's names with the scripts'
    replies. Stops between pages once `stop` is set."""
    await script.ensure_loaded(redis)
    for start in range(0, len(dead_ids), PIPELINE_PAGE):
        if stop is not None and stop.is_set():
            progress.stopped = True
            return
        batch = dead_ids[start : start + PIPELINE_PAGE]
        calls = []
        for dead_id in batch:
            index, entry_id = unqualify(dead_id)
            calls.append(call(shard(index), entry_id))
        # A SCRIPT FLUSH or a restart mid-run reloads it: every admin script is re-runnable.
        replies = await script.run_many(redis, calls)
        yield list(zip(batch, replies, strict=True))


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
    """Replays the entries (`qualify`d names) in order, each onto its own shard's events
    stream; `progress` fills in as pages complete."""
    at = now_ms()

    def call(on: Shard, entry_id: str) -> Call:
        keys = [on.dead, on.events, on.audit]
        return keys, [entry_id, cap, "1" if force else "0", at, who, why, audit_maxlen]

    async for page in _run_pages(redis, load_script("replay_dead"), dead_ids, call, progress, stop):
        for dead_id, (status, new_id, replays) in page:
            new = as_text(new_id)
            progress.outcomes.append(
                Outcome(
                    dead_id=dead_id,
                    status=as_text(status),
                    new_id=qualify(unqualify(dead_id)[0], new) if new else None,
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
    """Deletes the entries (`qualify`d names), each with its audit record on its shard;
    `progress` fills in as it goes."""
    at = now_ms()

    def call(on: Shard, entry_id: str) -> Call:
        return [on.dead, on.audit], [entry_id, at, who, why, audit_maxlen]

    async for page in _run_pages(redis, load_script("purge_dead"), dead_ids, call, progress, stop):
        for dead_id, deleted in page:
            status = "purged" if int(deleted) else "not_found"
            progress.outcomes.append(Outcome(dead_id=dead_id, status=status))
    return progress


@contextmanager
def stop_on_signal(stop: asyncio.Event, note: Callable[[str], None]) -> Iterator[None]:
    """While inside, the first signal sets `stop`; the second raises KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers live in the main thread only (an embedding test, say)
        return
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        note("acme: stopping after the entries in flight (press Ctrl-C again to leave now)")

    for signum in _SIGNALS:
        loop.add_signal_handler(signum, on_signal)
    try:
        yield
    finally:
        for signum in _SIGNALS:
            loop.remove_signal_handler(signum)


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    #: The record's id in its shard's audit stream, `qualify`d.
    audit_id: str
    action: str
    at: datetime
    who: str
    why: str
    #: The dead entry acted on, `qualify`d (`acme dead list`'s name for it).
    dead_id: str
    event_id: str | None
    order_id: str | None
    reason_class: str
    #: Replays of the event after this action (a purge keeps the count it had).
    replays: int
    #: The events-stream entry a replay created (`qualify`d); None for a purge.
    new_id: str | None
    forced: bool


def decode_audit(audit_id: str, fields: dict[bytes, bytes], shard_index: int = 0) -> AuditRecord:
    """A record of shard `shard_index`'s audit stream. The scripts write the stream ids of
    that shard; they are named across shards here."""

    def text(name: str) -> str:
        return fields.get(name.encode(), b"").decode("utf-8", "replace")

    def named(entry_id: str) -> str:
        return entry_id if not entry_id or "/" in entry_id else qualify(shard_index, entry_id)

    at_ms = text("at_ms")
    return AuditRecord(
        audit_id=qualify(shard_index, audit_id),
        action=text("action"),
        at=ms_to_datetime(int(at_ms) if at_ms.isdigit() else int(audit_id.partition("-")[0])),
        who=text("who"),
        why=text("why"),
        dead_id=named(text("dead_id")),
        event_id=text("event_id") or None,
        order_id=text("order_id") or None,
        reason_class=text("reason_class"),
        replays=int(text("replays") or 0),
        new_id=named(text("new_id")) or None,
        forced=text("forced") == "1",
    )


async def find_audit(
    redis: Redis,
    *,
    since_ms: int,
    order_ids: Collection[str] = (),
    event_ids: Collection[str] = (),
    max_scan: int = 50_000,
    shards: Sequence[Shard] = _SHARD_0,
) -> tuple[list[AuditRecord], bool]:
    """Records since `since_ms` about these orders or events, from the shards' audit streams,
    oldest first, and whether a scan stopped at `max_scan` entries of a shard before its end
    (results may then be incomplete)."""
    found: list[AuditRecord] = []
    truncated = False
    for on in shards:
        truncated |= await _find_audit_on(
            redis, on, found, since_ms=since_ms, wanted=(order_ids, event_ids), max_scan=max_scan
        )
    if len(shards) > 1:
        found.sort(key=lambda r: (r.at, id_order(r.audit_id)))
    return found, truncated


async def _find_audit_on(
    redis: Redis,
    on: Shard,
    found: list[AuditRecord],
    *,
    since_ms: int,
    wanted: tuple[Collection[str], Collection[str]],
    max_scan: int,
) -> bool:
    """Adds shard `on`'s matching records to `found`; True when it stopped at `max_scan`."""
    order_ids, event_ids = wanted
    lower = f"{since_ms}-0"
    scanned = 0
    while scanned < max_scan:
        page: Any = await redis.xrange(on.audit, lower, "+", count=_AUDIT_PAGE)
        for raw_id, fields in page:
            order_id = fields.get(b"order_id", b"").decode()
            event_id = fields.get(b"event_id", b"").decode()
            if order_id in order_ids or event_id in event_ids:
                found.append(decode_audit(raw_id.decode(), fields, on.index))
        scanned += len(page)
        if len(page) < _AUDIT_PAGE:
            return False
        lower = f"({page[-1][0].decode()}"
    return True
