"""Every test here starts from a whole, healthy cluster (`redis_cluster`, tests/conftest.py, one
per module): a node a test killed is restarted, as a replica, once the test is over."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_cluster import LocalRedisCluster


@pytest.fixture(autouse=True)
def _healed_after_each_test(redis_cluster: LocalRedisCluster) -> Iterator[None]:
    yield
    redis_cluster.heal()
