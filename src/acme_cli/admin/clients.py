"""The admin commands' connections: opened for one command, checked at once, closed after.

A command opens only what it needs. A server that does not answer, at connect time or midway,
becomes one `Unavailable` line naming the service and its URL (password redacted): at 3 a.m.
the operator must see at a glance which of the two is down, never a traceback.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisError

from acme_cli.admin.errors import Unavailable
from acme_cli.admin.settings import AdminSettings
from acme_runtime.env import redact_url
from acme_runtime.pg import init_connection
from acme_runtime.redis_client import open_redis

__all__ = ["Clients", "connect"]


@dataclass
class Clients:
    redis_client: Redis | None = None
    pool_client: asyncpg.Pool | None = None
    #: Why PostgreSQL, asked for "if up", is not there (not configured, unreachable); or None.
    postgres_missing: str | None = None

    @property
    def redis(self) -> Redis:
        if self.redis_client is None:
            raise RuntimeError("this command did not ask for Redis")
        return self.redis_client

    @property
    def pool(self) -> asyncpg.Pool:
        if self.pool_client is None:
            raise RuntimeError("this command did not ask for PostgreSQL")
        return self.pool_client


async def _open_redis(url: str, timeout_s: float) -> Redis:
    # Fail fast: the client's default retries would keep an operator waiting for seconds.
    client = open_redis(
        url,
        socket_connect_timeout=timeout_s,
        socket_timeout=max(10.0, timeout_s),
        retry=Retry(ExponentialWithJitterBackoff(cap=0.2, base=0.02), 2),
    )
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        raise Unavailable(f"Redis at {redact_url(url)} is unreachable: {_why(exc)}") from None
    return client


async def _open_pool(url: str, timeout_s: float) -> asyncpg.Pool:
    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            url,
            min_size=1,
            max_size=2,
            timeout=timeout_s,
            command_timeout=30,
            init=init_connection,  # timeline details as objects, as in the order service
            server_settings={"application_name": "acme-admin"},
        )
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise Unavailable(f"PostgreSQL at {redact_url(url)} is unreachable: {_why(exc)}") from None
    return pool


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


@asynccontextmanager
async def connect(
    settings: AdminSettings,
    *,
    redis: bool = False,
    postgres: bool = False,
    postgres_if_up: bool = False,
) -> AsyncIterator[Clients]:
    """The clients a command asked for; any later failure of one names its URL too.
    `postgres_if_up`: PostgreSQL when it is configured and answers; else the command goes on
    without it, and `postgres_missing` says why."""
    redis_url = settings.require_redis() if redis else None
    database_url = settings.require_database() if postgres else None
    clients = Clients()
    try:
        if redis_url is not None:
            clients.redis_client = await _open_redis(redis_url, settings.connect_timeout_s)
        if database_url is not None:
            clients.pool_client = await _open_pool(database_url, settings.connect_timeout_s)
        elif postgres_if_up and settings.database_url is None:
            clients.postgres_missing = "ACME_DATABASE_URL is not set"
        elif postgres_if_up and settings.database_url is not None:
            database_url = settings.database_url
            try:
                clients.pool_client = await _open_pool(database_url, settings.connect_timeout_s)
            except Unavailable as exc:
                clients.postgres_missing = str(exc)
        try:
            yield clients
        except RedisError as exc:
            url = redact_url(redis_url or "")
            raise Unavailable(f"Redis at {url} failed: {_why(exc)}") from None
        except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            url = redact_url(database_url or "")
            raise Unavailable(f"PostgreSQL at {url} failed: {_why(exc)}") from None
    finally:
        if clients.redis_client is not None:
            await clients.redis_client.aclose()
        if clients.pool_client is not None:
            await clients.pool_client.close()
