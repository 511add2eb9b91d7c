"""Shard naming and routing (acme_runtime.channels); cluster URLs (acme_runtime.redis_client)."""

from __future__ import annotations

import uuid
import zlib
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from acme_notify.settings import NotifySettings
from acme_runtime.channels import (
    DEAD_STREAM,
    EVENTS_STREAM,
    MAX_SHARDS,
    RECEIPTS_STREAM,
    qualify,
    shard,
    shard_of,
    shards,
    unqualify,
)
from acme_runtime.env import SettingsError, load_settings
from acme_runtime.redis_client import cluster_seeds, is_cluster, open_redis


def test_one_shard_keeps_every_historical_key_name() -> None:
    only = shard(0)
    assert (only.events, only.receipts, only.dead, only.audit) == (
        "{acme}:events",
        "{acme}:receipts",
        "{acme}:dead",
        "{acme}:audit",
    )
    assert (only.events, only.receipts, only.dead) == (EVENTS_STREAM, RECEIPTS_STREAM, DEAD_STREAM)
    assert only.published_key("e1") == "{acme}:published:e1"
    assert shards(1) == (only,)


def test_each_shards_keys_share_one_slot_and_shards_use_different_slots() -> None:
    """`key_slot` is redis-py's CRC16 of the hash tag: the slot a cluster puts a key in."""
    slots = []
    for on in shards(16):
        names = [on.events, on.receipts, on.dead, on.audit, on.last_error, on.held,
                 on.reaper_lock, on.archiver_lock, on.published_key(str(uuid.uuid4()))]  # fmt: skip
        assert len({key_slot(name.encode()) for name in names}) == 1, on
        slots.append(key_slot(on.events.encode()))
    assert len(set(slots)) == 16


def test_shard_of_is_crc32_of_the_order_id_so_other_languages_agree() -> None:
    order_id = "0190b7a8-0000-7000-8000-000000000000"
    assert shard_of(order_id, 8) == zlib.crc32(order_id.encode()) % 8 == 2486750422 % 8
    assert shard_of(order_id, 1) == 0


def test_shard_of_spreads_orders_evenly() -> None:
    counts = Counter(shard_of(str(uuid.uuid4()), 8) for _ in range(8_000))
    assert set(counts) == set(range(8))
    assert max(counts.values()) < 1.15 * 1_000 and min(counts.values()) > 0.85 * 1_000


@given(index=st.integers(0, MAX_SHARDS - 1), ms=st.integers(0, 2**48), seq=st.integers(0, 99))
def test_a_qualified_entry_name_parses_back(index: int, ms: int, seq: int) -> None:
    entry_id = f"{ms}-{seq}"
    name = qualify(index, entry_id)
    assert unqualify(name) == (index, entry_id)
    assert (name == entry_id) == (index == 0)


@pytest.mark.parametrize("bad", ["x/1-0", f"{MAX_SHARDS}/1-0", "-1/1-0", "/1-0"])
def test_a_bad_shard_prefix_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="shard"):
        unqualify(bad)


@pytest.mark.parametrize("count", [0, MAX_SHARDS + 1])
def test_shard_counts_outside_the_range_are_refused(count: int) -> None:
    with pytest.raises(ValueError, match="shard count"):
        shards(count)


def test_cluster_url_seeds_are_every_listed_node() -> None:
    url = "redis+cluster://user:pw@10.0.0.1:7000,10.0.0.2:7001,redis-2"
    assert cluster_seeds(url) == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("redis-2", 6379)]


async def test_a_cluster_url_makes_a_cluster_client_and_a_plain_one_does_not() -> None:
    cluster = open_redis("redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    plain = open_redis("redis://127.0.0.1:6379/0")
    try:
        assert isinstance(cluster, RedisCluster) and is_cluster(cluster)
        assert not is_cluster(plain)
    finally:
        await cluster.aclose()
        await plain.aclose()


def test_a_cluster_url_with_an_option_the_cluster_client_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="not supported in a cluster URL: db"):
        open_redis("redis+cluster://127.0.0.1:7000?db=2")


def test_settings_accept_a_cluster_url_and_check_each_seeds_port() -> None:
    base = {
        "ACME_DATABASE_URL": "postgresql://u@127.0.0.1/acme",
        "ACME_SMTP_URL": "smtp://127.0.0.1:25",
        "ACME_STREAM_SHARDS": "8",
    }
    ok = load_settings(
        NotifySettings, {**base, "ACME_REDIS_URL": "redis+cluster://127.0.0.1:7000,127.0.0.1:7001"}
    )
    assert ok.stream_shards == 8
    with pytest.raises(SettingsError, match="bad port"):
        load_settings(
            NotifySettings, {**base, "ACME_REDIS_URL": "redis+cluster://127.0.0.1:7000,h:99999"}
        )
    with pytest.raises(SettingsError, match="ACME_STREAM_SHARDS"):
        load_settings(
            NotifySettings,
            {**base, "ACME_REDIS_URL": "redis://127.0.0.1", "ACME_STREAM_SHARDS": "0"},
        )
