"""Callers of the order API, on real PostgreSQL: keys, scopes, revocation under load, the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from litestar import Litestar
from litestar.testing import AsyncTestClient

from acme_cli.embedded import free_port
from acme_orders.api_keys import KeyStore, parse_token
from acme_orders.app import api_app
from acme_orders.settings import OrdersSettings
from tests.harness import api_key
from tests.integration.test_admin_dead import (
    acme,
    admin_env,  # noqa: F401 - a fixture
)
from tests.integration.test_api import ORDER

PROBLEM = "application/problem+json"


def orders_settings_with(database_url: str, redis_url: str, **env: str) -> OrdersSettings:
    return OrdersSettings.from_env(
        {
            "ACME_DATABASE_URL": database_url,
            "ACME_REDIS_URL": redis_url,
            "ACME_METRICS_PORT": "0",
            "ACME_API_RATE_PER_S": "0",  # the rate limit is another test's subject
            **env,
        }
    )


@pytest.fixture
async def bare(orders_settings: OrdersSettings) -> AsyncIterator[AsyncTestClient[Any]]:
    """The API with no credentials on its requests."""
    async with AsyncTestClient(app=api_app(orders_settings)) as client:
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_refused(response: httpx.Response, status: int, kind: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["type"].endswith(f"/{kind}")
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_requests_without_a_valid_key_are_401_with_a_bearer_challenge(
    bare: AsyncTestClient[Any], database_url: str, pool: asyncpg.Pool
) -> None:
    """No key, another scheme, a malformed key, an unknown one: 401, nothing stored."""
    unknown = f"acme_{'0' * 12}_{'A' * 43}"  # well-formed, never issued
    key = await api_key(database_url)
    wrong_secret = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    for headers in (
        {},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        bearer("not-a-key"),
        bearer(unknown),
        bearer(wrong_secret),
    ):
        post = await bare.post("/orders", json=ORDER, headers=headers)
        assert_refused(post, 401, "unauthenticated")
        read = await bare.get(f"/orders/{uuid.uuid4()}", headers=headers)
        assert_refused(read, 401, "unauthenticated")
    assert (await bare.post("/orders", json=ORDER)).headers["www-authenticate"] == (
        'Bearer realm="acme-orders"'
    )
    assert 'error="invalid_token"' in post.headers["www-authenticate"]
    assert await pool.fetchval("SELECT count(*) FROM orders") == 0


async def test_a_key_without_the_scope_is_403_and_one_with_it_is_served(
    bare: AsyncTestClient[Any], database_url: str, pool: asyncpg.Pool
) -> None:
    """A read-only key cannot place orders, a write-only key cannot read them; each can do its
    own job, and the order records the key that placed it."""
    writer = await api_key(database_url, "orders:write")
    reader = await api_key(database_url, "orders:read")
    refused = await bare.post("/orders", json=ORDER, headers=bearer(reader))
    assert_refused(refused, 403, "insufficient-scope")
    assert 'scope="orders:write"' in refused.headers["www-authenticate"]
    placed = await bare.post("/orders", json=ORDER, headers=bearer(writer))
    assert placed.status_code == 201, placed.text
    order_id = placed.json()["id"]
    assert_refused(await bare.get(f"/orders/{order_id}", headers=bearer(writer)), 403,
                   "insufficient-scope")  # fmt: skip
    read = await bare.get(f"/orders/{order_id}", headers=bearer(reader))
    assert read.status_code == 200 and read.json()["id"] == order_id
    recorded = await pool.fetchval(
        "SELECT api_key_id FROM orders WHERE id = $1", uuid.UUID(order_id)
    )
    assert recorded == parse_token(writer)[0]  # type: ignore[index]


async def test_health_and_the_schema_need_no_key_and_metrics_are_not_public(
    bare: AsyncTestClient[Any],
) -> None:
    """Probes and the OpenAPI document stay open; /metrics is not on the public listener."""
    assert (await bare.get("/health/live")).status_code == 200
    assert (await bare.get("/health/ready")).status_code == 200
    assert (await bare.get("/schema/openapi.json")).status_code == 200
    assert (await bare.get("/metrics")).status_code == 404


async def test_the_api_serves_metrics_on_its_own_listener(
    database_url: str, redis_url: str
) -> None:
    """ACME_METRICS_PORT: the API's metrics and probes, on a port of their own."""
    port = free_port()
    settings = orders_settings_with(
        database_url, redis_url, ACME_METRICS_HOST="127.0.0.1", ACME_METRICS_PORT=str(port)
    )
    async with (
        AsyncTestClient(app=api_app(settings)) as client,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as scraper,
    ):
        await client.post("/orders", json=ORDER)  # a 401, counted like any request
        metrics = await scraper.get("/metrics")
        assert metrics.status_code == 200
        counted = [
            line
            for line in metrics.text.splitlines()
            if line.startswith("acme_http_request_duration_seconds_count")
        ]
        assert any('route="/orders"' in line and 'status="401"' in line for line in counted)
        assert (await scraper.get("/health/ready")).status_code == 200
        assert (await client.get("/metrics")).status_code == 404


async def test_only_the_hash_of_the_secret_is_stored(pool: asyncpg.Pool) -> None:
    """The table holds SHA-256 of the secret; the secret appears in no column of any row."""
    issued = await KeyStore(pool).create(
        name="checkout", scopes=("orders:write",), operator="ops@host"
    )
    key_id, secret = parse_token(issued.token)  # type: ignore[misc]
    row = await pool.fetchrow("SELECT * FROM api_keys WHERE id = $1", key_id)
    assert row is not None
    assert bytes(row["secret_sha256"]) == hashlib.sha256(secret.encode()).digest()
    stored = await pool.fetchval(
        "SELECT string_agg(t::text, ' ') FROM (SELECT k::text FROM api_keys k"
        " UNION ALL SELECT e::text FROM api_key_events e) AS t"
    )
    assert secret not in stored and issued.token not in stored
    assert "ops@host" in stored


async def test_a_key_revoked_mid_load_stops_within_the_cache_time(
    database_url: str, redis_url: str, pool: asyncpg.Pool
) -> None:
    """Eight callers place orders with one key for 3 s over real sockets (uvicorn in this
    loop); it is revoked after 1 s. Every answer before the revocation is 201, every request
    sent a cache time after it is 401, and every order answered 201 is stored (none other)."""
    cache_s = 0.5
    port = free_port()
    settings = orders_settings_with(database_url, redis_url, ACME_API_KEY_CACHE_S=str(cache_s))
    key = await api_key(database_url)
    key_id = parse_token(key)[0]  # type: ignore[index]
    loop = asyncio.get_running_loop()
    # (sent, answered, status, order id)
    answers: list[tuple[float, float, int, str | None]] = []
    revoking: list[float] = []
    async with (
        serving(api_app(settings), port),
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", headers=bearer(key), timeout=10
        ) as client,
    ):
        stop = loop.time() + 3.0

        async def caller() -> None:
            while loop.time() < stop:
                sent = loop.time()
                response = await client.post("/orders", json=ORDER)
                placed = response.json()["id"] if response.status_code == 201 else None
                answers.append((sent, loop.time(), response.status_code, placed))

        async def revoke() -> None:
            await asyncio.sleep(1.0)
            revoking.append(loop.time())
            await KeyStore(pool).revoke(key_id, operator="tests")
            revoking.append(loop.time())

        await asyncio.gather(*(caller() for _ in range(8)), revoke())
    started, done = revoking
    assert {status for *_, status, _ in answers} == {201, 401}
    assert all(status == 201 for _, answered, status, _ in answers if answered < started)
    late = [status for sent, _, status, _ in answers if sent > done + cache_s]
    assert late and set(late) == {401}, "a revoked key kept working past the cache time"
    placed = [order_id for *_, order_id in answers if order_id is not None]
    assert await pool.fetchval("SELECT count(*) FROM orders") == len(placed)
    stored = await pool.fetchval(
        "SELECT count(*) FROM orders WHERE id = ANY($1::uuid[]) AND api_key_id = $2",
        placed,
        key_id,
    )
    assert stored == len(placed)


@asynccontextmanager
async def serving(app: Litestar, port: int) -> AsyncIterator[None]:
    """`app` behind a real uvicorn on loopback, in this event loop, until the block ends."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "uvicorn did not start"
            await asyncio.sleep(0.01)
        yield
    finally:
        server.should_exit = True
        await task


@pytest.mark.usefixtures("admin_env")
async def test_acme_keys_create_list_revoke(
    capsys: pytest.CaptureFixture[str], database_url: str, redis_url: str, pool: asyncpg.Pool
) -> None:
    """`acme keys create` prints a key as its last line that works as a Bearer key; `list`
    never shows a secret; `revoke` ends it, audited with the operator; exit codes as the admin
    commands'."""
    code, out, _err = await acme(
        capsys, "keys", "create", "--name", "ci", "--scope", "orders:write", "--scope",
        "orders:read",
    )  # fmt: skip
    assert code == 0
    key = out.strip().splitlines()[-1]
    parsed = parse_token(key)
    assert parsed is not None, out
    key_id, secret = parsed
    settings = orders_settings_with(database_url, redis_url, ACME_API_KEY_CACHE_S="0")
    async with AsyncTestClient(app=api_app(settings)) as client:
        placed = await client.post("/orders", json=ORDER, headers=bearer(key))
        assert placed.status_code == 201, placed.text

        code, out, _err = await acme(capsys, "keys", "list")
        assert code == 0 and key_id in out and secret not in out
        code, out, _err = await acme(capsys, "keys", "list", "--json")
        (listed,) = json.loads(out)
        assert listed["id"] == key_id and listed["scopes"] == ["orders:write", "orders:read"]
        assert listed["revoked_at"] is None and listed["created_by"] == "ops-tester@host-1"

        code, out, _err = await acme(capsys, "keys", "revoke", key_id, "--why", "rotated")
        assert code == 0 and "revoked" in out
        refused = await client.post("/orders", json=ORDER, headers=bearer(key))
        assert refused.status_code == 401
    code, out, _err = await acme(capsys, "keys", "revoke", key_id)
    assert code == 0 and "already revoked" in out
    events = await pool.fetch(
        "SELECT kind, operator, detail FROM api_key_events WHERE key_id = $1 ORDER BY seq", key_id
    )
    assert [(e["kind"], e["operator"]) for e in events] == [
        ("created", "ops-tester@host-1"),
        ("revoked", "ops-tester@host-1"),
    ]
    assert events[1]["detail"] == {"why": "rotated"}
    assert (await acme(capsys, "keys", "revoke", "0" * 12))[0] == 5
    assert (await acme(capsys, "keys", "revoke", "nope"))[0] == 2
    bad_scope = await acme(capsys, "keys", "create", "--name", "x", "--scope", "orders:delete")
    assert bad_scope[0] == 2 and "orders:delete" in bad_scope[2]
