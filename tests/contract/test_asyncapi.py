"""The written message contract (docs/asyncapi.yaml) holds both sides to it.

Real messages produced by the order service and by the notifier are validated against the
document's JSON Schemas with a real validator, and the notifier must accept whatever the
document allows (including fields it does not know) and refuse what it forbids.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from jsonschema import Draft202012Validator, FormatChecker
from redis.asyncio import Redis

from acme_cli.smtp_sink import MailSink
from acme_notify.envelope import decode_entry
from acme_notify.errors import PoisonMessage
from acme_orders.contract import parse_order
from acme_orders.domain import OrderDraft
from acme_orders.events import build_envelope, encode_envelope, stream_fields
from acme_orders.publisher import publish_batch
from acme_orders.store import OutboxEvent
from acme_runtime.channels import DEAD_STREAM, EVENTS_STREAM, RECEIPTS_STREAM
from acme_runtime.ids import uuid7
from tests.harness import eventually, notify_settings, running_replica
from tests.strategies import valid_orders

DOC = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"


@cache
def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(DOC.read_text(encoding="utf-8"))
    return loaded


def validator(schema_name: str) -> Draft202012Validator:
    """A validator for one schema of the document, resolving its `#/components/...` refs."""
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": document()["components"]}
    return Draft202012Validator(root, format_checker=FormatChecker())


def assert_valid(schema_name: str, instance: Any) -> None:
    errors = sorted(validator(schema_name).iter_errors(instance), key=str)
    assert not errors, f"{schema_name}: " + "; ".join(e.message for e in errors[:5])


def as_text(fields: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in fields.items()}


def envelope_for(document_: dict[str, Any]) -> tuple[str, str, bytes]:
    draft = parse_order(document_)
    assert isinstance(draft, OrderDraft)
    event_id, order_id = str(uuid7()), str(uuid7())
    envelope = build_envelope(
        event_id=event_id,
        order_id=order_id,
        draft=draft,
        created_at=datetime.now(UTC),
        traceparent="00-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
    )
    return event_id, order_id, encode_envelope(envelope)


def test_the_document_is_asyncapi_3_with_the_three_channels() -> None:
    """The contract names the events, receipts and dead channels by their real keys."""
    doc = document()
    assert doc["asyncapi"].startswith("3.")
    addresses = {c["address"] for c in doc["channels"].values()}
    assert addresses == {EVENTS_STREAM, RECEIPTS_STREAM, DEAD_STREAM}


@settings(max_examples=50, deadline=None)
@given(valid_orders)
def test_every_envelope_the_order_service_produces_matches_the_contract(
    order: dict[str, Any],
) -> None:
    """For any valid order, the produced envelope and stream entry validate against the schema."""
    event_id, order_id, data = envelope_for(order)
    assert_valid("Envelope", json.loads(data))
    fields = stream_fields(event_id, order_id, data, "00-" + "12" * 16 + "-" + "34" * 8 + "-01")
    entry = {
        str(k): (v.decode() if isinstance(v, bytes) else v)
        for k, v in zip(fields[::2], fields[1::2], strict=True)
    }
    assert_valid("EventEntry", entry)


@given(valid_orders)
@settings(max_examples=30, deadline=None)
def test_the_notifier_accepts_every_contract_valid_entry_even_with_unknown_fields(
    order: dict[str, Any],
) -> None:
    """Additive changes are safe: unknown fields in the entry and the envelope are ignored."""
    event_id, order_id, data = envelope_for(order)
    envelope = json.loads(data)
    envelope["new_optional_field"] = {"added": "in 1.1"}
    envelope["payload"]["customer"]["loyalty_tier"] = "gold"
    assert_valid("Envelope", envelope)
    fields = {
        b"event_id": event_id.encode(),
        b"order_id": order_id.encode(),
        b"type": b"order.confirmation_requested",
        b"v": b"1",
        b"data": json.dumps(envelope).encode(),
        b"shard": b"7",
    }
    decoded = decode_entry("1-0", fields)
    assert decoded.envelope.event_id == event_id
    assert str(decoded.envelope.payload.total) == envelope["payload"]["total"]


def test_the_documented_example_is_valid_and_accepted() -> None:
    """The example in the document validates and decodes in the notifier."""
    message = document()["components"]["messages"]["OrderConfirmationRequested"]
    example = message["examples"][0]["payload"]
    assert_valid("EventEntry", example)
    assert_valid("Envelope", json.loads(example["data"]))
    decoded = decode_entry("1-0", {k.encode(): v.encode() for k, v in example.items()})
    assert decoded.envelope.payload.customer.locale == "pt-BR"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f, e: f.pop(b"v"), "missing field 'v'"),
        (lambda f, e: f.update({b"v": b"2"}), "unsupported schema version"),
        (lambda f, e: e["payload"].pop("customer"), "customer"),
        (lambda f, e: e["payload"].update({"total": 12.5}), "total"),
        (lambda f, e: e.update({"type": "order.cancelled"}), "unknown event type"),
    ],
)
def test_what_the_contract_forbids_is_poison_for_the_notifier(change: Any, reason: str) -> None:
    """Missing required fields, a new major version or a wrong type are refused with a reason."""
    event_id, order_id, data = envelope_for(
        {
            "customer": {"name": "Ana", "email": "ana@example.com"},
            "currency": "BRL",
            "items": [{"sku": "A", "name": "a", "quantity": 1, "unit_price": "1.00"}],
        }
    )
    envelope = json.loads(data)
    fields = {
        b"event_id": event_id.encode(),
        b"order_id": order_id.encode(),
        b"type": b"order.confirmation_requested",
        b"v": b"1",
    }
    change(fields, envelope)
    fields[b"data"] = json.dumps(envelope).encode()
    if b"v" in fields and fields[b"v"] == b"1":
        assert list(validator("Envelope").iter_errors(envelope)), "the schema forbids it too"
    with pytest.raises(PoisonMessage, match=reason):
        decode_entry("1-0", fields)


async def test_real_stream_entries_receipts_and_dead_letters_match_the_contract(
    redis: Redis,
    database_url: str,
    redis_url: str,
) -> None:
    """What actually lands on the three streams validates against the document."""
    events = []
    for email in ("ana@example.com", "rejected@example.com"):
        event_id, order_id, data = envelope_for(
            {
                "customer": {"name": "Ana Souza", "email": email},
                "currency": "BRL",
                "items": [
                    {"sku": "CANECA-01", "name": "Caneca", "quantity": 2, "unit_price": "19.90"}
                ],
            }
        )
        events.append(OutboxEvent(uuid7_from(event_id), uuid7_from(order_id), data))
    sink = MailSink(None)
    sink.policy = lambda env: (
        "550 5.1.1 mailbox unknown" if "rejected@" in " ".join(env.rcpt_tos) else None
    )
    await sink.start()
    try:
        async with running_replica(notify_settings(database_url, redis_url, sink.url)):
            await publish_batch(redis, events, dedupe_ttl_s=60)

            async def settled() -> bool:
                # dead_letter.lua writes the dead letter and its receipt in one script.
                receipts = await redis.xrange(RECEIPTS_STREAM)
                return {fields[b"type"] for _id, fields in receipts} == {b"sent", b"dead"}

            await eventually(settled, what="a sent and a dead receipt")
    finally:
        await sink.stop()
    for _id, fields in await redis.xrange(EVENTS_STREAM):
        entry = as_text(fields)
        assert_valid("EventEntry", entry)
        assert_valid("Envelope", json.loads(entry["data"]))
    receipts = [as_text(f) for _id, f in await redis.xrange(RECEIPTS_STREAM)]
    assert {r["type"] for r in receipts} == {"sent", "dead"}
    for receipt in receipts:
        assert_valid("Receipt", receipt)
    [(_id, dead)] = await redis.xrange(DEAD_STREAM)
    assert_valid("DeadLetter", as_text(dead))


def uuid7_from(text: str) -> Any:
    import uuid

    return uuid.UUID(text)


def test_an_envelope_whose_ids_are_not_uuids_is_poison() -> None:
    """The contract's `format: uuid` is enforced: such an entry is dead-lettered, not retried."""
    _event_id, _order_id, data = envelope_for(
        {
            "customer": {"name": "Ana", "email": "ana@example.com"},
            "currency": "BRL",
            "items": [{"sku": "A", "name": "a", "quantity": 1, "unit_price": "1.00"}],
        }
    )
    envelope = json.loads(data)
    envelope["event_id"] = "42"
    fields = {b"v": b"1", b"data": json.dumps(envelope).encode()}
    with pytest.raises(PoisonMessage, match="event_id"):
        decode_entry("1-0", fields)
