"""Every test here starts from a whole, healthy cluster (`redis_cluster`, tests/conftest.py, one
per module): a node a test killed is restarted, as a replica, once the test is over."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from acme_runtime.redis_client import is_cluster, open_redis
from tests.redis_cluster import LocalRedisCluster


@pytest.fixture(autouse=True)
def _healed_after_each_test(redis_cluster: LocalRedisCluster) -> Iterator[None]:
    yield
    redis_cluster.heal()


@pytest.fixture
async def cluster(redis_cluster: LocalRedisCluster) -> AsyncIterator[Redis]:
    """A client of the product's kind (`open_redis` on the seed URL), every master emptied."""
    for node in redis_cluster.masters():
        with node.client() as client:
            client.flushall()
    client = open_redis(redis_cluster.seed_url, socket_timeout=10)
    try:
        assert is_cluster(client)
        yield client
    finally:
        await client.aclose()
