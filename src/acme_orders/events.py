"""The notification event the order service produces: a versioned, self-sufficient envelope.

The envelope is *fat*: it carries everything the notifier needs to write the e-mail, so the
notifier never reads the orders database. Versioning: `schema_version` is the major version;
within one major version fields are only ever added, and consumers ignore fields they do not
know. The written contract is `docs/asyncapi.yaml`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Final

import msgspec

from acme_orders.domain import OrderDraft

__all__ = [
    "EVENT_TYPE",
    "SCHEMA_VERSION",
    "Envelope",
    "TraceContext",
    "build_envelope",
    "decode_envelope",
    "encode_envelope",
    "stream_fields",
]

EVENT_TYPE: Final = "order.confirmation_requested"
SCHEMA_VERSION: Final = 1


class TraceContext(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """W3C trace context of the order's trace, so the notifier continues it."""

    traceparent: str
    tracestate: str = ""


class CustomerPayload(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    email: str
    locale: str


class ItemPayload(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    name: str
    quantity: int
    unit_price: Decimal
    line_total: Decimal


class OrderPayload(msgspec.Struct, frozen=True, kw_only=True):
    customer: CustomerPayload
    currency: str
    items: tuple[ItemPayload, ...]
    total: Decimal
    created_at: datetime


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    type: str
    schema_version: int
    occurred_at: datetime
    order_id: str
    trace: TraceContext | None
    payload: OrderPayload


_encoder = msgspec.json.Encoder(decimal_format="string")
_decoder = msgspec.json.Decoder(Envelope)


def build_envelope(
    *,
    event_id: str,
    order_id: str,
    draft: OrderDraft,
    created_at: datetime,
    traceparent: str | None,
    tracestate: str = "",
) -> Envelope:
    return Envelope(
        event_id=event_id,
        type=EVENT_TYPE,
        schema_version=SCHEMA_VERSION,
        occurred_at=created_at,
        order_id=order_id,
        trace=None
        if traceparent is None
        else TraceContext(traceparent=traceparent, tracestate=tracestate),
        payload=OrderPayload(
            customer=CustomerPayload(
                name=draft.customer.name,
                email=draft.customer.email,
                locale=draft.customer.locale,
            ),
            currency=draft.currency,
            items=tuple(
                ItemPayload(
                    sku=item.sku,
                    name=item.name,
                    quantity=item.quantity,
                    unit_price=item.unit_price,
                    line_total=item.line_total,
                )
                for item in draft.items
            ),
            total=draft.total,
            created_at=created_at,
        ),
    )


def encode_envelope(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode_envelope(data: bytes) -> Envelope:
    return _decoder.decode(data)


def stream_fields(
    event_id: str, order_id: str, envelope_json: bytes, traceparent: str | None = None
) -> list[str | bytes]:
    """The stream entry as flat field/value pairs: a few readable fields, then the envelope.

    The flat `event_id`, `order_id`, `type` and `v` let an operator read `XRANGE` output and
    let a consumer reject an unknown major version before decoding the body.
    """
    fields: list[str | bytes] = [
        "event_id", event_id,
        "order_id", order_id,
        "type", EVENT_TYPE,
        "v", str(SCHEMA_VERSION),
        "data", envelope_json,
    ]  # fmt: skip
    if traceparent:
        # The producer span of this publish: the consumer's span becomes its child.
        fields += ["traceparent", traceparent]
    return fields
