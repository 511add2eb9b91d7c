"""The dead-letter stream, read: decoding dead_letter.lua's layout, and bounded paging.

`decode_dead_entry` is pure (fields in, typed entry out) so that metrics and other tools can
reuse it. Every read here names a COUNT: newest-first listings walk the stream with XREVRANGE
one page at a time, so a stream of millions of entries costs one page of memory, never all.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterable
from datetime import datetime
from typing import Any, Final

import msgspec
from redis.asyncio import Redis

from acme_cli.admin.parse import ms_to_datetime
from acme_notify.keys import DEAD_STREAM
from acme_runtime.logs import mask_email

__all__ = [
    "DeadDetail",
    "DeadEntry",
    "DeadPage",
    "decode_dead_detail",
    "decode_dead_entry",
    "fetch_dead",
    "list_dead",
    "scan_dead",
]

#: Never ask Redis for more than this many entries in one round trip.
PAGE_SIZE: Final = 500
RawFields = dict[bytes, bytes]


class DeadEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One dead letter: why it died, and enough of the event to recognise it."""

    dead_id: str
    original_id: str
    event_id: str | None
    order_id: str | None
    email: str | None
    reason_class: str
    reason: str
    last_error: str
    deliveries: int
    consumer: str
    #: How many times an operator already replayed this event (it died again since).
    replays: int
    first_attempt_at: datetime | None
    dead_at: datetime

    def masked(self) -> DeadEntry:
        email = None if self.email is None else mask_email(self.email)
        return msgspec.structs.replace(self, email=email)


class DeadDetail(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the dead stream knows about one entry, envelope included."""

    entry: DeadEntry
    #: The original entry's readable fields (event_id, order_id, type, v ...), without `data`.
    fields: dict[str, str]
    #: The decoded JSON envelope (`data`), or None when it does not decode (poison).
    envelope: Any
    envelope_error: str | None
    trace_id: str | None

    def masked(self) -> DeadDetail:
        """The same, with the customer's e-mail masked wherever it appears."""
        envelope = self.envelope
        email = _email(envelope)
        if email is not None:
            envelope = msgspec.json.decode(msgspec.json.encode(envelope))
            envelope["payload"]["customer"]["email"] = mask_email(email)
        return msgspec.structs.replace(self, entry=self.entry.masked(), envelope=envelope)


class DeadPage(msgspec.Struct, frozen=True, kw_only=True):
    entries: list[DeadEntry]
    #: Pass as `--before` for the next (older) page; None once the end was reached.
    next_before: str | None


def _text(fields: RawFields, name: bytes) -> str:
    return fields.get(name, b"").decode("utf-8", "replace")


def _int(fields: RawFields, name: bytes) -> int | None:
    try:
        return int(fields.get(name, b""))
    except ValueError:
        return None


def _id_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def _envelope(fields: RawFields) -> tuple[Any, str | None]:
    data = fields.get(b"data")
    if data is None:
        return None, "no `data` field"
    try:
        return msgspec.json.decode(data), None
    except msgspec.DecodeError as exc:
        return None, f"undecodable envelope: {exc}"


def _email(envelope: Any) -> str | None:
    try:
        email = envelope["payload"]["customer"]["email"]
    except (KeyError, TypeError):
        return None
    return email if isinstance(email, str) else None


def decode_dead_entry(dead_id: str, fields: RawFields, *, envelope: Any = None) -> DeadEntry:
    """A dead entry from its raw fields; tolerant: a missing field reads as empty."""
    if envelope is None:
        envelope, _error = _envelope(fields)
    first_ms = _int(fields, b"first_attempt_ms")
    return DeadEntry(
        dead_id=dead_id,
        original_id=_text(fields, b"original_id"),
        event_id=_text(fields, b"event_id") or None,
        order_id=_text(fields, b"order_id") or None,
        email=_email(envelope),
        reason_class=_text(fields, b"reason_class"),
        reason=_text(fields, b"reason"),
        last_error=_text(fields, b"last_error"),
        deliveries=_int(fields, b"deliveries") or 0,
        consumer=_text(fields, b"consumer"),
        replays=_int(fields, b"replays") or 0,
        first_attempt_at=None if first_ms is None else ms_to_datetime(first_ms),
        dead_at=ms_to_datetime(_int(fields, b"dead_at_ms") or _id_ms(dead_id)),
    )


#: dead_letter.lua's own fields (and the envelope), as opposed to the original entry's.
_META: Final = frozenset(
    {
        b"original_id",
        b"reason_class",
        b"reason",
        b"last_error",
        b"deliveries",
        b"consumer",
        b"first_attempt_ms",
        b"dead_at_ms",
        b"data",
    }
)


def decode_dead_detail(dead_id: str, fields: RawFields) -> DeadDetail:
    envelope, error = _envelope(fields)
    trace = envelope.get("trace") if isinstance(envelope, dict) else None
    traceparent = trace.get("traceparent") if isinstance(trace, dict) else None
    parts = traceparent.split("-") if isinstance(traceparent, str) else []
    return DeadDetail(
        entry=decode_dead_entry(dead_id, fields, envelope=envelope),
        fields={
            k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
            for k, v in fields.items()
            if k not in _META
        },
        envelope=envelope,
        envelope_error=error,
        trace_id=parts[1] if len(parts) == 4 else None,
    )


def _decoded(raw: Iterable[tuple[bytes, RawFields]]) -> list[tuple[str, RawFields]]:
    return [(entry_id.decode(), fields) for entry_id, fields in raw if fields]


async def list_dead(
    redis: Redis,
    *,
    limit: int,
    before: str | None = None,
    since_ms: int | None = None,
    reasons: Collection[str] = (),
    max_scan: int = 20 * PAGE_SIZE,
) -> DeadPage:
    """Up to `limit` entries, newest first, older than `before`, dead since `since_ms`.

    With a reason filter at most `max_scan` entries are examined per call; `next_before` then
    points where the scan stopped, so the next call carries on from there.
    """
    upper = f"({before}" if before else "+"
    lower = "-" if since_ms is None else f"{since_ms}-0"
    # Unfiltered, one extra entry tells whether an older page exists; filtered, pages are
    # bigger so that a rare reason does not cost a round trip per match.
    page_size = min(limit + 1, PAGE_SIZE) if not reasons else PAGE_SIZE
    found: list[DeadEntry] = []
    scanned = 0
    while True:
        raw: Any = await redis.xrevrange(DEAD_STREAM, upper, lower, count=page_size)
        for entry_id, fields in _decoded(raw):
            if reasons and _text(fields, b"reason_class") not in reasons:
                continue
            if len(found) == limit:
                return DeadPage(entries=found, next_before=found[-1].dead_id)
            found.append(decode_dead_entry(entry_id, fields))
        scanned += len(raw)
        if len(raw) < page_size:
            return DeadPage(entries=found, next_before=None)
        last = raw[-1][0].decode()
        if scanned >= max_scan:
            return DeadPage(entries=found, next_before=last)
        upper = f"({last}"


async def scan_dead(
    redis: Redis,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    max_entries: int | None = None,
) -> AsyncIterator[tuple[str, RawFields]]:
    """Raw entries oldest first, dead in [since_ms, until_ms), one page in memory at a time."""
    lower = "-" if since_ms is None else f"{since_ms}-0"
    upper = "+" if until_ms is None else str(until_ms - 1)  # <ms> alone = its last sequence
    seen = 0
    while max_entries is None or seen < max_entries:
        page: Any = await redis.xrange(DEAD_STREAM, lower, upper, count=PAGE_SIZE)
        for entry_id, fields in _decoded(page):
            yield entry_id, fields
        seen += len(page)
        if len(page) < PAGE_SIZE:
            return
        lower = f"({page[-1][0].decode()}"


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
            for entry_id, fields in _decoded(reply):
                found[entry_id] = fields
    return found
