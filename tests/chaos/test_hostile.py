"""Poison and hostile input while orders flow: none of it may stop or corrupt the pipeline.

Malformed entries written straight to the events stream are dead-lettered at once with the
reason (`poison`); recipients the SMTP server refuses with 550 are dead-lettered as
`invalid_recipient`; CR/LF and other control characters in an order never get past the API
(422, no order stored); odd but valid text (markup, emoji, encoded-word look-alikes) is
delivered like any other order. Meanwhile the regular load is e-mailed, every order once.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from typing import Any, Final

import pytest
from bench.stack import HOST
from redis.asyncio import Redis

from acme_runtime.channels import DEAD_STREAM, EVENTS_STREAM
from acme_runtime.clock import now_ms
from acme_runtime.ids import uuid7
from tests.chaos.client import post_order
from tests.chaos.conftest import StartSystem
from tests.chaos.harness import ChaosSystem, Scale
from tests.chaos.verdict import Intake, conclude
from tests.harness import eventually

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

#: The load's addresses are customer<index>@example.com: one in ten is refused at RCPT.
REFUSED: Final = re.compile(r"^customer\d*7@")

_ENVELOPE: Final[dict[str, Any]] = {
    "event_id": "01a2284a-00e7-7f88-aefc-d3f30c82d241",
    "type": "order.confirmation_requested",
    "schema_version": 1,
    "occurred_at": "2026-11-29T17:11:08.263442Z",
    "order_id": "01a2284a-00e7-75d8-9d59-f15a8ec9cc53",
    "payload": {
        "customer": {"name": "Ana Souza", "email": "ana@example.com", "locale": "pt-BR"},
        "currency": "BRL",
        "items": [{"sku": "CANECA-01", "name": "Caneca", "quantity": 2,
                   "unit_price": "19.90", "line_total": "39.80"}],
        "total": "39.80",
        "created_at": "2026-11-29T17:11:08.263442Z",
    },
}  # fmt: skip


def _envelope(**changes: Any) -> bytes:
    document = json.loads(json.dumps(_ENVELOPE))
    document["event_id"] = str(uuid7())
    for path, value in changes.items():
        target = document
        *parents, leaf = path.split("__")
        for key in parents:
            target = target[int(key)] if key.isdigit() else target[key]
        target[leaf] = value
    return json.dumps(document).encode()


#: Stream entries no producer of ours writes: (fields, reason class, a fragment of the reason).
POISON: Final[list[tuple[dict[str, bytes], str, str]]] = [
    ({"v": b"1", "data": b"{not json"}, "poison", "undecodable envelope"),
    ({"v": b"99", "data": b"{}"}, "poison", "unsupported schema version '99'"),
    ({"foo": b"bar"}, "poison", "missing field 'v'"),
    ({"v": b"1"}, "poison", "missing field 'data'"),
    ({"v": b"1", "data": b"\xff\xfe\x00\x80garbage"}, "poison", "undecodable envelope"),
    ({"v": b"1", "data": _envelope(type="order.cancelled")}, "poison", "unknown event type"),
    ({"v": b"1", "data": _envelope(schema_version=2)}, "poison", "schema_version 2"),
    ({"v": b"1", "data": _envelope(payload__items=[])}, "poison", "order without items"),
    # The send ledger is partitioned by the event id's time: an id that is no UUIDv7 of now
    # could not be recorded once e-mailed, so it is refused before any e-mail.
    ({"v": b"1", "data": _envelope(event_id=str(uuid.uuid4()))}, "poison", "not a UUIDv7"),
    ({"v": b"1", "data": _envelope(event_id=str(uuid7(now_ms() + 30 * 86_400_000)))}, "poison",
     "in the future"),
    ({"v": b"1", "data": _envelope(payload__items__0__unit_price="NaN")}, "poison",
     "undecodable envelope"),
    ({"v": b"1", "data": _envelope(payload__customer__email="a@b.example\r\nBcc: x@y.example")},
     "invalid_recipient", "not a plain ASCII address"),
]  # fmt: skip

#: Orders the API must refuse with 422: control characters anywhere in the text.
HOSTILE_ORDERS: Final = [
    {"name": "Ana\r\nBcc: evil@attacker.example"},
    {"email": "ana@example.com\r\nRCPT TO:<evil@attacker.example>"},
    {"name": "Ana\x00Souza"},
    {"name": "Ana\u2028Souza"},
    {"item": "Caneca\nX-Injected: 1"},
    {"sku": "CANECA\r01"},
]

#: Odd but valid orders: delivered like any other.
ODD_ORDERS: Final = [
    {"name": "<script>alert('x')</script>"},
    {"name": "Zoë 😀 Ñandú 王"},
    {"name": "=?utf-8?b?QmNjOiBldmlsQGF0dGFja2VyLmV4YW1wbGU=?="},
    {"item": 'Caneca" onmouseover="alert(1)'},
    {"name": "A" * 200},
    {"email": "ana+tag@mail.example.com"},
]


def _order(index: int, **change: str) -> bytes:
    customer = {"name": change.get("name", "Ana Souza"), "locale": "pt-BR",
                "email": change.get("email", f"odd{index}@example.com")}  # fmt: skip
    item = {"sku": change.get("sku", "CANECA-01"), "name": change.get("item", "Caneca"),
            "quantity": 1, "unit_price": "19.90"}  # fmt: skip
    order = {"customer": customer, "items": [item], "currency": "BRL"}
    return json.dumps(order).encode()


async def _dead_letters(redis_url: str) -> dict[str, dict[str, str]]:
    """The dead stream, by the id of the entry each dead letter was (fields decoded loosely:
    a poison entry's own fields may be any bytes)."""
    redis = Redis.from_url(redis_url)
    try:
        entries: Any = await redis.xrange(DEAD_STREAM)
    finally:
        await redis.aclose()
    dead = {}
    for _id, raw in entries:
        fields = {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}
        dead[fields["original_id"]] = fields
    return dead


async def _hostile(system: ChaosSystem, written: dict[str, tuple[str, str]]) -> Intake:
    """Writes the poison entries and places the hostile and odd orders; the odd ones' intake."""
    await asyncio.sleep(2.0)  # the schedule: hostile input 2 s into the load, while orders flow
    redis = Redis.from_url(system.stack.redis_url)
    try:
        for fields, reason_class, fragment in POISON:
            entry_id: Any = await redis.xadd(EVENTS_STREAM, dict[Any, Any](fields))
            written[entry_id.decode()] = (reason_class, fragment)
    finally:
        await redis.aclose()
    port = system.stack.http_port
    for index, change in enumerate(HOSTILE_ORDERS):
        status, _h, body = await post_order(
            HOST, port, _order(index, **change), f"bad-{index}", api_key=system.stack.api_key
        )
        assert status == 422, (change, status, body[:300])
    accepted: dict[str, str] = {}
    for index, change in enumerate(ODD_ORDERS):
        status, _h, body = await post_order(
            HOST, port, _order(index, **change), f"odd-{index}", api_key=system.stack.api_key
        )
        assert status == 201, (change, status, body[:300])
        document = json.loads(body)
        accepted[document["id"]] = document["created_at"]
    return Intake(len(HOSTILE_ORDERS) + len(ODD_ORDERS), accepted, rejected=len(HOSTILE_ORDERS))


async def test_poison_refused_addresses_and_crlf_are_rejected_and_the_flow_continues(
    start_system: StartSystem, scale: Scale
) -> None:
    """Poison and 550s are dead-lettered with reasons, CR/LF orders get 422, all else is sent."""
    system = await start_system(notifiers=2)
    await system.set_smtp(reject_rcpt=REFUSED.pattern)
    written: dict[str, tuple[str, str]] = {}
    load, odd = await asyncio.gather(
        system.load(scale.rate_per_s, scale.duration_s), _hostile(system, written)
    )

    def expect_dead(email: str) -> str | None:
        return "invalid_recipient" if REFUSED.search(email) else None

    verdict = await conclude(
        system, "poison-and-hostile-input", scale, Intake.from_load(load).plus(odd),
        expect_dead=expect_dead,
    )  # fmt: skip
    dead = await _dead_letters(system.stack.redis_url)
    for entry_id, (reason_class, fragment) in written.items():
        assert entry_id in dead, f"poison entry {entry_id} ({fragment}) was not dead-lettered"
        assert dead[entry_id]["reason_class"] == reason_class
        assert fragment in dead[entry_id]["reason"]
    assert verdict.dead_expected > 0.05 * verdict.accepted, "one address in ten is refused"
    assert verdict.rejected == len(HOSTILE_ORDERS)
    assert not verdict.problems(max_e2e_s=30.0)


async def test_envelope_with_a_non_uuid_event_id_is_dead_lettered_as_poison(
    start_system: StartSystem,
) -> None:
    """An envelope whose event_id is not a UUID is dead-lettered at once as poison."""
    system = await start_system(notifiers=1)
    redis = Redis.from_url(system.stack.redis_url)
    try:
        added: Any = await redis.xadd(EVENTS_STREAM, {"v": b"1", "data": _envelope(event_id="42")})
    finally:
        await redis.aclose()
    entry_id = added.decode()

    async def dead_lettered() -> bool:
        return entry_id in await _dead_letters(system.stack.redis_url)

    await eventually(dead_lettered, timeout_s=10, what=f"entry {entry_id} to be dead-lettered")
    dead = await _dead_letters(system.stack.redis_url)
    assert dead[entry_id]["reason_class"] == "poison"
