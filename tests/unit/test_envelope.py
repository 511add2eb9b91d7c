"""The notification envelope: lossless encode/decode for every valid order."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hypothesis import given

from acme_orders.contract import parse_order
from acme_orders.domain import OrderDraft
from acme_orders.events import (
    EVENT_TYPE,
    SCHEMA_VERSION,
    build_envelope,
    decode_envelope,
    encode_envelope,
    stream_fields,
)
from acme_runtime.ids import uuid7, uuid7_time_ms
from tests.strategies import valid_orders


@given(valid_orders)
def test_envelope_round_trips_for_any_valid_order(document: dict[str, Any]) -> None:
    """encode then decode gives back the same envelope, money and text intact."""
    draft = parse_order(document)
    assert isinstance(draft, OrderDraft)
    envelope = build_envelope(
        event_id=str(uuid7()),
        order_id=str(uuid7()),
        draft=draft,
        created_at=datetime.now(UTC),
        traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
    )
    decoded = decode_envelope(encode_envelope(envelope))
    assert decoded == envelope
    assert decoded.payload.total == draft.total
    assert decoded.type == EVENT_TYPE and decoded.schema_version == SCHEMA_VERSION


def test_money_is_encoded_as_strings() -> None:
    """Decimal amounts travel as JSON strings, never floats."""
    draft = parse_order(
        {
            "customer": {"name": "A", "email": "a@example.com"},
            "currency": "BRL",
            "items": [{"sku": "A", "name": "a", "quantity": 1, "unit_price": "0.10"}],
        }
    )
    assert isinstance(draft, OrderDraft)
    raw = encode_envelope(
        build_envelope(
            event_id="e", order_id="o", draft=draft, created_at=datetime.now(UTC), traceparent=None
        )
    )
    assert b'"total":"0.10"' in raw


def test_stream_entry_carries_readable_fields_and_the_envelope() -> None:
    """XRANGE shows event id, order id, type and major version beside the body."""
    fields = stream_fields("ev", "or", b"{}")
    pairs = dict(zip(fields[::2], fields[1::2], strict=True))
    assert pairs == {
        "event_id": "ev",
        "order_id": "or",
        "type": EVENT_TYPE,
        "v": str(SCHEMA_VERSION),
        "data": b"{}",
    }


def test_uuid7_is_time_ordered_and_well_formed() -> None:
    """Later ids sort after earlier ones and carry their creation time."""
    first, second = uuid7(now_ms=1_000), uuid7(now_ms=2_000)
    assert first < second
    assert first.version == 7 and uuid7_time_ms(second) == 2_000
