"""The order API against real PostgreSQL and Redis: create, read, validate, idempotency, limits."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis

from acme_orders.events import decode_envelope
from acme_orders.settings import OrdersSettings
from acme_runtime.channels import EVENTS_STREAM
from tests.harness import api_client
from tests.strategies import invalid_bodies

ORDER: dict[str, Any] = {
    "customer": {"name": "Ana Souza", "email": "ana@example.com", "locale": "pt-BR"},
    "items": [
        {"sku": "CANECA-01", "name": "Caneca", "quantity": 2, "unit_price": "19.90"},
        {"sku": "CAMISA-02", "name": "Camiseta", "quantity": 1, "unit_price": "59.00"},
    ],
    "currency": "BRL",
}


@pytest.fixture
async def client(orders_settings: OrdersSettings) -> AsyncIterator[AsyncTestClient[Any]]:
    async with api_client(orders_settings) as test_client:
        yield test_client


async def wait_for_stream(redis: Redis, count: int, timeout_s: float = 5) -> list[Any]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        entries = await redis.xrange(EVENTS_STREAM)
        if len(entries) >= count or asyncio.get_running_loop().time() > deadline:
            return entries
        await asyncio.sleep(0.02)


async def test_post_order_persists_and_returns_totals(
    client: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    """201 with Location, computed totals and a pending notification; the row is in Postgres."""
    response = await client.post("/orders", json=ORDER)
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["location"] == f"/orders/{body['id']}"
    assert uuid.UUID(body["id"]).version == 7
    assert body["total"] == "98.80"
    assert [i["line_total"] for i in body["items"]] == ["39.80", "59.00"]
    assert body["notification"]["status"] == "pending"
    row = await pool.fetchrow(
        "SELECT total, customer_email FROM orders WHERE id = $1", uuid.UUID(body["id"])
    )
    assert row is not None and str(row["total"]) == "98.8000"
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1


async def test_post_publishes_the_event_to_the_stream(
    client: AsyncTestClient[Any], redis: Redis
) -> None:
    """The fast path puts the full envelope on the stream right after commit."""
    body = (await client.post("/orders", json=ORDER)).json()
    entries = await wait_for_stream(redis, 1)
    assert len(entries) == 1
    fields = entries[0][1]
    assert fields[b"order_id"].decode() == body["id"]
    envelope = decode_envelope(fields[b"data"])
    assert envelope.payload.customer.email == "ana@example.com"
    assert str(envelope.payload.total) == "98.80"


async def test_get_order_shows_status_and_timeline(
    client: AsyncTestClient[Any], redis: Redis
) -> None:
    """GET returns the order, its notification status and what happened to it."""
    created = (await client.post("/orders", json=ORDER)).json()
    await wait_for_stream(redis, 1)
    for _ in range(100):
        order = (await client.get(f"/orders/{created['id']}")).json()
        if order["notification"]["status"] == "published":
            break
        await asyncio.sleep(0.02)
    assert order["notification"]["status"] == "published"
    assert [entry["kind"] for entry in order["timeline"]] == ["created", "published"]
    assert order["timeline"][1]["detail"]["via"] == "fast-path"
    assert order["notification"]["stream_id"]


async def test_unknown_and_malformed_order_ids_are_404(client: AsyncTestClient[Any]) -> None:
    """A missing order and a non-UUID id both give a problem+json 404."""
    for path in (f"/orders/{uuid.uuid4()}", "/orders/not-a-uuid"):
        response = await client.get(path)
        assert response.status_code == 404
        assert response.headers["content-type"].startswith("application/problem+json")


async def test_validation_errors_name_each_field(
    client: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    """422 problem details list every bad field, and nothing is stored."""
    bad = {
        **ORDER,
        "currency": "XYZ1",
        "customer": {"name": "Ana\r\nBcc: x@evil.test", "email": "nope"},
    }
    response = await client.post("/orders", json=bad)
    assert response.status_code == 422
    problem = response.json()
    assert problem["status"] == 422 and problem["type"].endswith("/validation")
    assert {e["field"] for e in problem["errors"]} == {
        "customer.name",
        "customer.email",
        "currency",
    }
    assert await pool.fetchval("SELECT count(*) FROM orders") == 0


async def test_malformed_json_is_400(client: AsyncTestClient[Any]) -> None:
    """A body that is not JSON is a 400 problem, not a 500."""
    response = await client.post(
        "/orders", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["type"].endswith("/malformed-json")


async def test_wrong_content_type_is_415(client: AsyncTestClient[Any]) -> None:
    """Form posts are refused with a clear media-type problem."""
    response = await client.post(
        "/orders", content=b"a=b", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 415


async def test_oversized_body_is_413(client: AsyncTestClient[Any], pool: asyncpg.Pool) -> None:
    """Bodies over ACME_MAX_BODY_BYTES are refused before being stored."""
    huge = {**ORDER, "padding": "x" * 100_000}
    response = await client.post("/orders", json=huge)
    assert response.status_code == 413
    assert response.json()["type"].endswith("/body-too-large")
    assert await pool.fetchval("SELECT count(*) FROM orders") == 0


async def test_same_idempotency_key_returns_the_same_order(
    client: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    """A retried request with the same key and body creates nothing new."""
    headers = {"Idempotency-Key": "retry-123"}
    first = await client.post("/orders", json=ORDER, headers=headers)
    second = await client.post("/orders", json=ORDER, headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert await pool.fetchval("SELECT count(*) FROM orders") == 1
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1


async def test_concurrent_retries_with_one_key_create_one_order(
    client: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    """Ten simultaneous requests with the same key all get the same single order."""
    headers = {"Idempotency-Key": "burst-1"}
    responses = await asyncio.gather(
        *[client.post("/orders", json=ORDER, headers=headers) for _ in range(10)]
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert await pool.fetchval("SELECT count(*) FROM orders") == 1


async def test_same_key_with_another_body_is_refused(client: AsyncTestClient[Any]) -> None:
    """Reusing a key for a different order is a 409 conflict, and names the original order."""
    headers = {"Idempotency-Key": "retry-456"}
    first = await client.post("/orders", json=ORDER, headers=headers)
    other = {**ORDER, "currency": "USD"}
    second = await client.post("/orders", json=other, headers=headers)
    assert second.status_code == 409
    assert second.json()["type"].endswith("/idempotency-key-reused")
    assert first.json()["id"] in second.json()["detail"]


async def test_malformed_idempotency_key_is_400(client: AsyncTestClient[Any]) -> None:
    """Keys are visible ASCII, at most 255 characters."""
    response = await client.post("/orders", json=ORDER, headers={"Idempotency-Key": "x" * 300})
    assert response.status_code == 400


async def test_health_endpoints(client: AsyncTestClient[Any]) -> None:
    """Liveness and readiness answer 200 when PostgreSQL answers."""
    assert (await client.get("/health/live")).status_code == 200
    ready = await client.get("/health/ready")
    assert ready.status_code == 200 and ready.json()["postgres"] == "ok"


async def test_openapi_is_served(client: AsyncTestClient[Any]) -> None:
    """Litestar serves the OpenAPI document with the order routes."""
    schema = (await client.get("/schema/openapi.json")).json()
    assert "/orders" in schema["paths"] and "/orders/{order_id}" in schema["paths"]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=invalid_bodies)
async def test_arbitrary_invalid_bodies_never_produce_a_5xx(
    client: AsyncTestClient[Any], body: Any
) -> None:
    """Whatever JSON arrives, the answer is a 2xx or a 4xx problem, never a server error."""
    response = await client.post("/orders", json=body)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json")


async def test_api_is_not_ready_until_the_schema_is_migrated(
    client: AsyncTestClient[Any], pool: asyncpg.Pool
) -> None:
    """Readiness waits for the migrations, so pods take no traffic before `acme migrate`."""
    assert (await client.get("/health/ready")).status_code == 200
    await pool.execute("DELETE FROM schema_migrations WHERE version = '0003_outbox_traceparent'")
    response = await client.get("/health/ready")
    assert response.status_code == 503
    assert "migrations" in response.json()["postgres"]
