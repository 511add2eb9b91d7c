"""TLS to every server, verified, on real servers with a CA made for this module: Redis over
rediss://, PostgreSQL with sslmode=verify-full, SMTP with STARTTLS and SMTPS. An order travels
the whole system with every connection encrypted and checked; a certificate from another CA,
or made for another name, is refused with a message that says so."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import ssl
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from acme_cli.admin.clients import connect
from acme_cli.admin.errors import Unavailable
from acme_cli.admin.settings import AdminSettings
from acme_cli.embedded import EmbeddedPostgres, EmbeddedRedis
from acme_cli.migrations import migrate
from acme_cli.smtp_sink import MailSink
from acme_notify.errors import TransientError
from acme_notify.smtp import SmtpConfig, SmtpPool
from acme_orders.app import open_clients as open_order_clients
from acme_orders.contract import decode_order
from acme_orders.domain import OrderDraft
from acme_orders.publisher import FastPathPublisher
from acme_orders.service import OrderService
from acme_orders.settings import OrdersSettings
from acme_orders.telemetry import OrdersMetrics
from acme_runtime.channels import EVENTS_STREAM
from tests.debian import PackageUnavailableError
from tests.harness import (
    eventually,
    notify_settings,
    partitions_ahead,
    running_order_workers,
    running_replica,
)
from tests.tls import Pki, make_pki, ssl_postgres_bin_dir, tls_redis_server

pytestmark = pytest.mark.slow

ORDER = {
    "customer": {"name": "Ana Souza", "email": "ana@example.com", "locale": "pt-BR"},
    "items": [{"sku": "CANECA-01", "name": "Caneca", "quantity": 1, "unit_price": "19.90"}],
    "currency": "BRL",
}
VERIFY_FAILED = "certificate verify failed"


def _server_or_skip(install: Any, *args: Any) -> Any:
    """A TLS-capable server binary, installed if missing; skipped where it cannot be (not
    root, no apt), and a failure under CI, which must run these tests."""
    try:
        return install(*args)
    except PackageUnavailableError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the TLS tests: {exc}")
        pytest.skip(f"a TLS-capable server cannot be installed here (CI fails instead): {exc}")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_redis(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """Redis speaking TLS only (no plaintext port), with the module CA's certificate."""
    binary = _server_or_skip(tls_redis_server, tmp_path_factory.mktemp("redis-bin"))
    server = EmbeddedRedis(
        tmp_path_factory.mktemp("tls-redis") / "data",
        appendonly=False,
        binary=binary,
        tls=pki.server,
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tls_postgres(pki: Pki) -> Iterator[EmbeddedPostgres]:
    """PostgreSQL with ssl=on, TCP over TLS only (pg_hba `hostssl`), migrated over TLS."""
    bin_dir = _server_or_skip(ssl_postgres_bin_dir)
    # Not under pytest's temp root, which another session may make 0700 (see tests/conftest.py).
    root = Path(tempfile.mkdtemp(prefix="acme-test-tls-pg-"))
    server = EmbeddedPostgres(root / "data", durable=False, bin_dir=bin_dir, tls=pki.server)
    try:
        server.start()
        asyncio.run(migrate(server.url))
        # As the API and the workers do before they write: else an order placed once the
        # floor partition's end has passed (a minute boundary) has no partition yet.
        asyncio.run(partitions_ahead(server.url))
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def starttls_sink(pki: Pki) -> AsyncIterator[MailSink]:
    """An SMTP server that refuses MAIL before STARTTLS, with the module CA's certificate."""
    sink = MailSink(None, tls=_server_context(pki))
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()


def _server_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server.cert_file, pki.server.key_file)
    return context


def _with(url: str, **params: str | Path) -> str:
    """`url` with its query parameters replaced by `params`."""
    base = url.partition("?")[0]
    return base + "?" + "&".join(f"{key}={value}" for key, value in params.items())


def _draft() -> OrderDraft:
    draft = decode_order(msgspec.json.encode(ORDER))
    assert isinstance(draft, OrderDraft), draft
    return draft


# -- the whole system -------------------------------------------------------------------------


async def test_an_order_travels_the_whole_system_over_verified_tls_only(
    tls_postgres: EmbeddedPostgres, tls_redis: EmbeddedRedis, starttls_sink: MailSink, pki: Pki
) -> None:
    """API pool, relay (LISTEN too), notifier and receipts, all configured by URL alone:
    rediss:// with ssl_ca_certs, sslmode=verify-full with sslrootcert, STARTTLS with cafile."""
    orders = OrdersSettings.from_env(
        {
            "ACME_DATABASE_URL": tls_postgres.url,
            "ACME_REDIS_URL": tls_redis.url,
            "ACME_RELAY_POLL_MS": "50",
            "ACME_RELAY_GRACE_MS": "100",
            "ACME_CONSUMER_NAME": "tls-orders",
        }
    )
    notify = notify_settings(
        tls_postgres.url, tls_redis.url, f"{starttls_sink.url}&cafile={pki.ca_file}"
    )
    async with (
        open_order_clients(orders) as clients,
        running_order_workers(orders),
        running_replica(notify),
    ):
        # The fast path is left idle: the relay publishes the outbox row over rediss://.
        publisher = FastPathPublisher(
            clients.store,
            clients.redis,
            queue_size=10,
            pause_ms=100,
            dedupe_ttl_s=orders.dedupe_ttl_s,
            metrics=OrdersMetrics(),
        )
        service = OrderService(clients.store, publisher)
        placed = await service.place_order(_draft(), idempotency_key=None)
        order_id = str(placed.order["id"])
        [received] = await starttls_sink.wait_for(1, timeout_s=15)
        assert received.order_id == order_id

        async def sent() -> bool:
            view = await service.get_order(uuid.UUID(order_id))
            return view is not None and view["notification"]["status"] == "sent"

        await eventually(sent, timeout_s=15, what="the sent receipt applied over TLS")
        sessions = await clients.pool.fetch(
            "SELECT a.application_name, s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a"
            " USING (pid) WHERE a.backend_type = 'client backend'"
        )
    names = {row["application_name"] for row in sessions}
    assert {"acme-orders", "acme-notifier"} <= names
    assert all(row["ssl"] for row in sessions), sessions


# -- Redis -------------------------------------------------------------------------------------


async def test_rediss_publishes_and_consumes_with_a_client_certificate_from_the_url(
    tls_redis: EmbeddedRedis, pki: Pki
) -> None:
    """redis-py takes the CA, the client certificate and its key from the URL: a stream entry
    goes in and comes out through a consumer group."""
    url = _with(
        tls_redis.url,
        ssl_ca_certs=pki.ca_file,
        ssl_certfile=pki.client_cert,
        ssl_keyfile=pki.client_key,
    )
    client = Redis.from_url(OrdersSettings.from_env(_urls(redis=url)).redis_url)
    try:
        await client.delete(EVENTS_STREAM)
        await client.xgroup_create(EVENTS_STREAM, "tls-test", id="0", mkstream=True)
        entry_id = await client.xadd(EVENTS_STREAM, {"event": "over-tls"})
        read = await client.xreadgroup("tls-test", "c1", {EVENTS_STREAM: ">"}, count=1)
        [[_stream, [(got_id, fields)]]] = read
        assert (got_id, fields) == (entry_id, {b"event": b"over-tls"})
        assert await client.xack(EVENTS_STREAM, "tls-test", got_id) == 1
    finally:
        await client.delete(EVENTS_STREAM)
        await client.aclose()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("wrong_ca", VERIFY_FAILED),
        ("wrong_host", "Hostname mismatch"),
        # The server resets or closes the connection, depending on when the bytes arrive.
        ("plaintext", "Error while reading from|Connection closed by server"),
        ("wrong_client_cert", "alert unknown ca"),
    ],
)
async def test_redis_refuses_another_ca_another_name_plaintext_and_a_stranger(
    tls_redis: EmbeddedRedis, pki: Pki, change: str, expected: str
) -> None:
    """A server certificate from another CA or for another name (localhost: the certificate
    says 127.0.0.1) is refused by the client; a plaintext client and a client certificate
    from another CA by the server. The operator's CLI says which server and why."""
    port = tls_redis.port
    url = {
        "wrong_ca": f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={pki.wrong_ca_file}",
        "wrong_host": f"rediss://localhost:{port}/0?ssl_ca_certs={pki.ca_file}",
        "plaintext": f"redis://127.0.0.1:{port}/0",
        "wrong_client_cert": _with(
            tls_redis.url,
            ssl_ca_certs=pki.ca_file,
            ssl_certfile=pki.wrong_client_cert,
            ssl_keyfile=pki.wrong_client_key,
        ),
    }[change]
    client = Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        with pytest.raises(RedisConnectionError) as caught:
            await client.ping()
    finally:
        await client.aclose()
    assert re.search(expected, str(caught.value)), caught.value
    if change in ("wrong_ca", "wrong_host"):
        assert VERIFY_FAILED in str(caught.value)
        said = await _admin_refusal(url, postgres=False)
        assert said.startswith(f"Redis at {url} is unreachable: ")
        assert VERIFY_FAILED in said


async def _admin_refusal(url: str, *, postgres: bool) -> str:
    """The one line an admin command answers when it cannot connect to `url`."""
    var = "ACME_DATABASE_URL" if postgres else "ACME_REDIS_URL"
    settings = AdminSettings.from_env({var: url, "ACME_ADMIN_CONNECT_TIMEOUT_S": "5"})
    with pytest.raises(Unavailable) as refused:
        async with connect(settings, redis=not postgres, postgres=postgres):
            pass
    return str(refused.value)


def _urls(*, redis: str) -> dict[str, str]:
    return {"ACME_REDIS_URL": redis, "ACME_DATABASE_URL": "postgresql://acme@db/acme"}


# -- PostgreSQL --------------------------------------------------------------------------------


async def test_postgres_verify_full_connects_and_the_session_is_encrypted(
    tls_postgres: EmbeddedPostgres, pki: Pki
) -> None:
    """sslmode=verify-full with sslrootcert: asyncpg checks the chain and the name, and the
    server reports the session as TLS."""
    assert "sslmode=verify-full" in tls_postgres.url
    conn = await asyncpg.connect(tls_postgres.url, timeout=10)
    try:
        ssl_on = await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await conn.close()
    assert ssl_on is True


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("wrong_ca", VERIFY_FAILED),
        ("wrong_host", "Hostname mismatch"),
        ("plaintext", "no encryption"),
    ],
)
async def test_postgres_refuses_another_ca_another_name_and_plaintext(
    tls_postgres: EmbeddedPostgres, pki: Pki, change: str, expected: str
) -> None:
    """verify-full refuses a certificate from another CA or for another name; the server
    refuses a session without TLS. The operator's CLI names the server and the reason."""
    port, db = tls_postgres.port, tls_postgres.database
    url = {
        "wrong_ca": f"postgresql://postgres@127.0.0.1:{port}/{db}"
        f"?sslmode=verify-full&sslrootcert={pki.wrong_ca_file}",
        "wrong_host": f"postgresql://postgres@localhost:{port}/{db}"
        f"?sslmode=verify-full&sslrootcert={pki.ca_file}",
        "plaintext": f"postgresql://postgres@127.0.0.1:{port}/{db}?sslmode=disable",
    }[change]
    with pytest.raises((ssl.SSLError, asyncpg.PostgresError)) as caught:
        await asyncpg.connect(url, timeout=10)
    assert expected in str(caught.value)
    said = await _admin_refusal(url, postgres=True)
    assert said.startswith(f"PostgreSQL at {url} is unreachable: ")
    assert expected in said


# -- SMTP --------------------------------------------------------------------------------------


@pytest.mark.parametrize("implicit_tls", [False, True], ids=["starttls", "smtps"])
async def test_smtp_delivers_over_verified_tls_and_refuses_another_ca(
    pki: Pki, implicit_tls: bool
) -> None:
    """STARTTLS and SMTPS check the relay's certificate against `cafile` (the system's CAs
    when unset): the module CA delivers, another CA or another name is a TLS error, retried
    later and never sent in the clear."""
    sink = MailSink(None, tls=_server_context(pki), implicit_tls=implicit_tls)
    await sink.start()
    sep = "&" if "?" in sink.url else "?"
    try:
        for cafile, host, accepted in [
            (pki.ca_file, "127.0.0.1", True),
            (pki.wrong_ca_file, "127.0.0.1", False),
            (pki.ca_file, "localhost", False),
            (None, "127.0.0.1", False),  # the system's CAs never signed a throw-away CA
        ]:
            url = sink.url.replace("127.0.0.1", host)
            url += f"{sep}cafile={cafile}" if cafile else ""
            pool = SmtpPool(SmtpConfig.from_url(url, timeout_s=5, pool_size=1))
            try:
                if accepted:
                    reply = await pool.send(
                        "a@acme.test", ["b@example.org"], b"Subject: x\r\n\r\nx"
                    )
                    assert reply.startswith("250")
                else:
                    with pytest.raises(TransientError) as caught:
                        await pool.send("a@acme.test", ["b@example.org"], b"Subject: x\r\n\r\nx")
                    assert caught.value.reason.startswith("tls error"), caught.value.reason
                    assert caught.value.server_down
            finally:
                await pool.close()
        assert len(sink.messages) == 1
    finally:
        await sink.stop()
