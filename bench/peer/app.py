"""The conventional peer's API: FastAPI validates the order, asyncpg INSERTs it, Celery sends
the e-mail (`send_confirmation.delay`). No outbox: a crash between the INSERT and `.delay()`
loses the e-mail, which is the trade the conventional stack makes.

Run from bench/peer/.venv (bench/side_by_side.py does):
``uvicorn app:app --app-dir bench/peer --host 127.0.0.1 --port 8001``
Environment: PEER_DATABASE_URL (the table from schema.sql must exist), PEER_REDIS_URL.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field
from tasks import send_confirmation

# The same rules as acme_orders.contract, in pydantic's words: no control characters in
# names, an ASCII addr-spec, money as a decimal string with up to 2 decimals.
_TEXT = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x1f\x7f-\x9f\s][^\x00-\x1f\x7f-\x9f]*$"
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL = rf"^{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+[A-Za-z]{{2,63}}$"
_PRICE = r"^(?:[1-9][0-9]{0,7}(?:\.[0-9]{1,2})?|0\.(?:[1-9][0-9]?|0[1-9]))$"
_SKU = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"

Name = Annotated[str, Field(min_length=1, max_length=200, pattern=_TEXT)]


class Customer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    name: Name
    email: Annotated[str, Field(max_length=254, pattern=_EMAIL)]
    locale: Literal["pt-BR", "en-US", "pt", "en"] = "pt-BR"


class Item(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    sku: Annotated[str, Field(min_length=1, max_length=64, pattern=_SKU)]
    name: Name
    quantity: Annotated[int, Field(ge=1, le=10_000)]
    unit_price: Annotated[str, Field(pattern=_PRICE)]


class OrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    customer: Customer
    items: Annotated[list[Item], Field(min_length=1, max_length=100)]
    currency: Literal["BRL", "USD", "EUR"]


_INSERT = """
insert into orders (id, customer_name, customer_email, locale, currency, total, items)
values ($1, $2, $3, $4, $5, $6, $7::jsonb)
returning created_at
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # The same pool bounds as acme_orders (ACME_DB_POOL_MIN/MAX defaults).
    app.state.pool = await asyncpg.create_pool(
        os.environ["PEER_DATABASE_URL"], min_size=2, max_size=10
    )
    try:
        yield
    finally:
        await app.state.pool.close()


app = FastAPI(lifespan=lifespan)


@app.get("/health")
async def health() -> dict[str, bool]:
    return {"ok": True}


@app.post("/orders", status_code=201)
async def create_order(order: OrderIn, request: Request) -> dict[str, Any]:
    # The Authorization and Idempotency-Key headers the load generator sends are ignored.
    order_id = str(uuid.uuid4())
    total = sum((Decimal(i.unit_price) * i.quantity for i in order.items), Decimal(0))
    item_list = [i.model_dump(mode="json") for i in order.items]
    items = json.dumps(item_list)
    customer = order.customer
    created_at = await request.app.state.pool.fetchval(
        _INSERT,
        uuid.UUID(order_id),
        customer.name,
        customer.email,
        customer.locale,
        order.currency,
        total,
        items,
    )
    # A blocking Redis round trip on the event loop, as most FastAPI + Celery apps do it.
    send_confirmation.delay(
        order_id,
        customer.email,
        customer.name,
        customer.locale,
        f"{total:.2f}",
        order.currency,
        item_list,
    )
    return {
        "id": order_id,
        "created_at": created_at.isoformat(),
        "status": "accepted",
        "total": f"{total:.2f}",
        "currency": order.currency,
    }
