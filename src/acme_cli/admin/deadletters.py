"""Dead letters as data: dead_letter.lua's layout (acme_runtime.deadletter_layout) decoded into
typed entries.

Pure (raw fields in, typed entry out, no I/O), so that metrics and other tools can reuse it;
the reads are in deadstream.py. Decoding is tolerant: a poison entry may lack any field, and
then that field reads as empty rather than failing the whole listing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import msgspec

from acme_runtime.deadletter_layout import split_dead_fields
from acme_runtime.logs import mask_email
from acme_runtime.text import as_text

__all__ = [
    "DeadDetail",
    "DeadEntry",
    "RawFields",
    "decode_dead_detail",
    "decode_dead_entry",
    "ms_to_datetime",
]

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
    #: "stream" (the dead stream in Redis) or "archive" (notify.dead_letters in PostgreSQL,
    #: where the notifier's archiver moves the oldest entries).
    where: str = "stream"

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
    #: When the archiver moved it to PostgreSQL; None while it is in the dead stream.
    archived_at: datetime | None = None

    def masked(self) -> DeadDetail:
        """The same, with the customer's e-mail masked wherever it appears."""
        envelope = self.envelope
        email = _email(envelope)
        if email is not None:
            envelope = msgspec.json.decode(msgspec.json.encode(envelope))
            envelope["payload"]["customer"]["email"] = mask_email(email)
        return msgspec.structs.replace(self, entry=self.entry.masked(), envelope=envelope)


def _field(fields: Mapping[Any, bytes], name: str | bytes) -> str:
    # A dead letter may be a poison message: its bytes need not be UTF-8.
    return as_text(fields.get(name, b""), "replace")


def _int(fields: Mapping[Any, bytes], name: str | bytes) -> int | None:
    try:
        return int(fields.get(name, b""))
    except ValueError:
        return None


def ms_to_datetime(ms: int) -> datetime:
    """A Unix-ms time of the streams (an entry id's first part, `dead_at_ms`, `at_ms`), in UTC."""
    return datetime.fromtimestamp(ms / 1000, UTC)


def _id_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def _envelope(fields: Mapping[bytes, bytes]) -> tuple[Any, str | None]:
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


def decode_dead_entry(
    dead_id: str, fields: RawFields, *, envelope: Any = None, where: str = "stream"
) -> DeadEntry:
    """A dead entry from its raw fields; tolerant: a missing field reads as empty."""
    own, original, _named = split_dead_fields(fields)
    if envelope is None:
        envelope, _error = _envelope(original)
    first_ms = _int(own, "first_attempt_ms")
    return DeadEntry(
        dead_id=dead_id,
        original_id=_field(own, "original_id"),
        event_id=_field(original, b"event_id") or None,
        order_id=_field(original, b"order_id") or None,
        email=_email(envelope),
        reason_class=_field(own, "reason_class"),
        reason=_field(own, "reason"),
        last_error=_field(own, "last_error"),
        deliveries=_int(own, "deliveries") or 0,
        consumer=_field(own, "consumer"),
        replays=_int(original, b"replays") or 0,
        first_attempt_at=None if first_ms is None else ms_to_datetime(first_ms),
        dead_at=ms_to_datetime(_int(own, "dead_at_ms") or _id_ms(dead_id)),
        where=where,
    )


def decode_dead_detail(
    dead_id: str,
    fields: RawFields,
    *,
    where: str = "stream",
    archived_at: datetime | None = None,
) -> DeadDetail:
    original = split_dead_fields(fields).original
    envelope, error = _envelope(original)
    trace = envelope.get("trace") if isinstance(envelope, dict) else None
    traceparent = trace.get("traceparent") if isinstance(trace, dict) else None
    parts = traceparent.split("-") if isinstance(traceparent, str) else []
    return DeadDetail(
        entry=decode_dead_entry(dead_id, fields, envelope=envelope, where=where),
        fields={
            k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
            for k, v in original.items()
            if k != b"data"
        },
        envelope=envelope,
        envelope_error=error,
        trace_id=parts[1] if len(parts) == 4 else None,
        archived_at=archived_at,
    )
