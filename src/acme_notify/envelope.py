"""What the notifier accepts from the events stream: tolerant of additions, strict on needs.

Unknown fields are ignored (producers may add fields within a major version); a missing or
mistyped required field, an unknown major version or undecodable bytes make the entry a
`PoisonMessage`, dead-lettered at once with the reason. This is the notifier's own reading of
the contract in docs/asyncapi.yaml; it shares no code with the producer.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Final

import msgspec

from acme_notify.errors import PoisonMessage
from acme_runtime.text import as_text

__all__ = [
    "ACCEPTED_MAJOR_VERSION",
    "Customer",
    "Envelope",
    "Item",
    "Order",
    "StreamEntry",
    "decode_entry",
]

ACCEPTED_MAJOR_VERSION: Final = 1
EVENT_TYPE: Final = "order.confirmation_requested"


class Customer(msgspec.Struct, frozen=True):
    name: str
    email: str
    locale: str = "pt-BR"


#: A decimal string, as the contract says: a JSON number here is a producer bug, not money.
Money = Annotated[str, msgspec.Meta(pattern=r"^(0|[1-9][0-9]*)(\.[0-9]{1,4})?$")]


class Item(msgspec.Struct, frozen=True):
    sku: str
    name: str
    quantity: int
    unit_price: Money
    line_total: Money


class Order(msgspec.Struct, frozen=True):
    customer: Customer
    currency: str
    items: tuple[Item, ...]
    total: Money
    created_at: datetime


class Trace(msgspec.Struct, frozen=True):
    traceparent: str
    tracestate: str = ""


#: The ids are UUIDs (the contract's `format: uuid`); anything else is poison, refused here
#: rather than failing later in the ledger as if our database were down.
Uuid = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
    ),
]


class Envelope(msgspec.Struct, frozen=True):
    event_id: Uuid
    type: str
    schema_version: int
    occurred_at: datetime
    order_id: Uuid
    payload: Order
    trace: Trace | None = None


class StreamEntry(msgspec.Struct, frozen=True):
    """One entry read from the stream: its id, its delivery count and the decoded envelope."""

    entry_id: str
    deliveries: int
    envelope: Envelope
    #: The index of the shard whose stream holds it.
    shard: int = 0


_decoder = msgspec.json.Decoder(Envelope)
#: How far ahead of this notifier's clock an event id's time may be (clock skew between
#: hosts); the send ledger's partitions are made at least this far ahead.
EVENT_ID_MAX_AHEAD_MS: Final = 3_600_000


def _check_event_id(event_id: str) -> None:
    """The order service makes every event id a UUIDv7 of the time it was made; the send
    ledger is partitioned by that time (docs/adr/0018-partitioned-tables.md), so any other id
    could not be recorded after its e-mail went out, and a retry would send it again. Refused
    here, before any e-mail, as poison."""
    if event_id[14] != "7":
        raise PoisonMessage(f"event_id {event_id!r} is not a UUIDv7")
    made_ms = int(event_id[:8] + event_id[9:13], 16)
    if made_ms > time.time() * 1000 + EVENT_ID_MAX_AHEAD_MS:
        raise PoisonMessage(f"event_id {event_id!r} was made more than an hour in the future")


def decode_entry(
    entry_id: str, fields: dict[bytes, bytes], deliveries: int = 1, shard: int = 0
) -> StreamEntry:
    """Decodes a raw stream entry, or raises PoisonMessage saying exactly what is wrong."""
    raw_version = fields.get(b"v")
    if raw_version is None:
        raise PoisonMessage("missing field 'v' (schema major version)")
    version = as_text(raw_version, "replace")
    if version != str(ACCEPTED_MAJOR_VERSION):
        raise PoisonMessage(
            f"unsupported schema version {version!r}; this notifier reads "
            f"version {ACCEPTED_MAJOR_VERSION}"
        )
    data = fields.get(b"data")
    if data is None:
        raise PoisonMessage("missing field 'data' (the envelope)")
    try:
        envelope = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise PoisonMessage(f"undecodable envelope: {exc}") from None
    if envelope.type != EVENT_TYPE:
        raise PoisonMessage(f"unknown event type {envelope.type!r}")
    if envelope.schema_version != ACCEPTED_MAJOR_VERSION:
        raise PoisonMessage(f"envelope schema_version {envelope.schema_version} does not match")
    if not envelope.payload.items:
        raise PoisonMessage("order without items")
    _check_event_id(envelope.event_id)
    return StreamEntry(entry_id=entry_id, deliveries=deliveries, envelope=envelope, shard=shard)
