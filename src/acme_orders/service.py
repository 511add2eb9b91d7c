"""The order service's use cases: place an order, read one back. No HTTP, no environment.

`place_order` commits the order and its outbox event in one statement (shared with the orders of
concurrent requests: acme_orders.group_commit), then hands the event to the fast-path publisher
and returns: the e-mail never sits on the request's critical path.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import msgspec
import structlog
from babel.numbers import get_currency_precision
from opentelemetry.trace import SpanKind

from acme_orders.domain import OrderDraft
from acme_orders.events import build_envelope, encode_envelope
from acme_orders.group_commit import GroupCommit
from acme_orders.publisher import FastPathPublisher
from acme_orders.store import (
    Created,
    IdempotencyMismatch,
    NewOrder,
    OrderStore,
    OutboxEvent,
    Replayed,
)
from acme_runtime.ids import uuid7
from acme_runtime.logs import mask_email
from acme_runtime.tracing import current_traceparent, tracer

__all__ = ["IdempotencyConflict", "OrderService", "Placed", "order_view"]

log = structlog.get_logger(__name__)

# One statement writes the order, its items, outbox row and first timeline entry.
_DB_INSERT_ATTRIBUTES: Final = {
    "db.system.name": "postgresql",
    "db.operation.name": "INSERT",
    "db.collection.name": "orders",
    "db.query.summary": "INSERT orders, order_items, outbox, order_timeline",
}


@dataclass(frozen=True)
class Placed:
    order: dict[str, Any]
    replayed: bool


def _money(value: Decimal, currency: str) -> str:
    return str(value.quantize(Decimal(1).scaleb(-get_currency_precision(currency))))


def _from_timeline(record: dict[str, Any], key: str) -> str | None:
    for entry in record["timeline"]:
        detail = entry["detail"]
        if isinstance(detail, dict) and detail.get(key):
            return str(detail[key])
    return None


def order_view(record: dict[str, Any], *, with_timeline: bool) -> dict[str, Any]:
    """The JSON shape of an order, from `OrderStore.get_order`'s record."""
    order = record["order"]
    currency = order["currency"]
    outbox = record["outbox"]
    view: dict[str, Any] = {
        "id": str(order["id"]),
        "customer": {
            "name": order["customer_name"],
            "email": order["customer_email"],
            "locale": order["locale"],
        },
        "currency": currency,
        "items": [
            {
                "sku": item["sku"],
                "name": item["name"],
                "quantity": item["quantity"],
                "unit_price": _money(item["unit_price"], currency),
                "line_total": _money(item["line_total"], currency),
            }
            for item in record["items"]
        ],
        "total": _money(order["total"], currency),
        "created_at": order["created_at"].isoformat(),
        "trace_id": order["trace_id"],
        "notification": {
            "status": order["notification_status"],
            "updated_at": None
            if order["notification_updated_at"] is None
            else order["notification_updated_at"].isoformat(),
            "attempts": order["delivery_attempts"],
            "detail": order["notification_detail"],
            # The outbox row goes once the e-mail is sent or dead; the timeline keeps the ids.
            "event_id": str(outbox["event_id"]) if outbox else _from_timeline(record, "event_id"),
            "stream_id": outbox["stream_id"]
            if outbox and outbox["stream_id"]
            else _from_timeline(record, "stream_id"),
        },
    }
    if with_timeline:
        view["timeline"] = [
            {"at": entry["at"].isoformat(), "kind": entry["kind"], "detail": entry["detail"]}
            for entry in record["timeline"]
        ]
    return view


class IdempotencyConflict(Exception):
    """The Idempotency-Key was already used for a different request."""

    def __init__(self, order_id: uuid.UUID) -> None:
        super().__init__(f"Idempotency-Key already used for order {order_id} with another body")
        self.order_id = order_id


class OrderService:
    def __init__(
        self,
        store: OrderStore,
        publisher: FastPathPublisher,
        *,
        db_timeout_s: float = 2.0,
        writer: GroupCommit | None = None,
    ) -> None:
        """`writer`: the group commit that writes new orders (one of its own by default)."""
        self._store = store
        self._writer = writer or GroupCommit(store)
        self._publisher = publisher
        # Bounds each request's whole database work, waiting for a pooled connection included:
        # a PostgreSQL that hangs gives quick 503s, not requests piling up behind it.
        self._db_timeout_s = db_timeout_s

    async def place_order(
        self,
        draft: OrderDraft,
        *,
        idempotency_key: str | None,
        api_key_id: str | None = None,
    ) -> Placed:
        """`api_key_id`: the key of the caller, recorded on the order (None: placed by code
        that holds no key, such as the benchmarks' direct inserts)."""
        # The request's span: its context travels with the event to the notifier.
        traceparent, trace_id = current_traceparent()
        order_id = uuid7()
        event_id = uuid7()
        created_at = datetime.now(UTC)
        envelope = encode_envelope(
            build_envelope(
                event_id=str(event_id),
                order_id=str(order_id),
                draft=draft,
                created_at=created_at,
                traceparent=traceparent,
            )
        )
        order = NewOrder(
            order_id=order_id,
            event_id=event_id,
            draft=draft,
            created_at=created_at,
            envelope=envelope,
            trace_id=trace_id,
            idempotency_key=idempotency_key,
            traceparent=traceparent,
            api_key_id=api_key_id,
        )
        with tracer().start_as_current_span(
            "INSERT orders", kind=SpanKind.CLIENT, attributes=_DB_INSERT_ATTRIBUTES
        ):
            async with asyncio.timeout(self._db_timeout_s):
                result = await self._writer.write(order)
        if isinstance(result, IdempotencyMismatch):
            raise IdempotencyConflict(result.order_id)
        if isinstance(result, Created):
            self._publisher.submit(OutboxEvent(event_id, order_id, envelope, traceparent))
            log.info(
                "order_created",
                order_id=str(order_id),
                event_id=str(event_id),
                email=mask_email(draft.customer.email),
                api_key_id=api_key_id,
                total=str(draft.total),
                currency=draft.currency,
            )
            return Placed(
                self._fresh_view(order_id, event_id, draft, created_at, trace_id), replayed=False
            )
        assert isinstance(result, Replayed)
        async with asyncio.timeout(self._db_timeout_s):
            record = await self._store.get_order(result.order_id)
        assert record is not None, "an idempotency key always points at a stored order"
        return Placed(order_view(record, with_timeline=False), replayed=True)

    async def get_order(self, order_id: uuid.UUID) -> dict[str, Any] | None:
        async with asyncio.timeout(self._db_timeout_s):
            record = await self._store.get_order(order_id)
        return None if record is None else order_view(record, with_timeline=True)

    @staticmethod
    def _fresh_view(
        order_id: uuid.UUID,
        event_id: uuid.UUID,
        draft: OrderDraft,
        created_at: datetime,
        trace_id: str | None,
    ) -> dict[str, Any]:
        # Built from what was just written, so creating an order costs no read-back.
        record = {
            "order": {
                "id": order_id,
                "customer_name": draft.customer.name,
                "customer_email": draft.customer.email,
                "locale": draft.customer.locale,
                "currency": draft.currency,
                "total": draft.total,
                "created_at": created_at,
                "trace_id": trace_id,
                "notification_status": "pending",
                "notification_updated_at": None,
                "delivery_attempts": 0,
                "notification_detail": None,
            },
            "items": [msgspec.structs.asdict(item) for item in draft.items],
            "outbox": {"event_id": event_id, "stream_id": None},
            "timeline": [],
        }
        return order_view(record, with_timeline=False)
