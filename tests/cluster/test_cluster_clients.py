"""The product's Redis code on a real Redis Cluster (tests/redis_cluster.py), shard by shard:
scripts a node has lost are loaded there again (one call, and a pipeline spread over every
master), and the admin commands see every shard's dead letters and lag across the nodes."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from redis.asyncio import Redis

from acme_cli.main import main
from acme_notify.streams import Streams
from acme_orders.events import stream_fields
from acme_runtime.channels import shard, shards
from acme_runtime.ids import uuid7
from acme_runtime.lua import load_script
from tests.redis_cluster import LocalRedisCluster

SHARDS = 8


def publish_calls(count: int) -> list[tuple[list[str], list[Any]]]:
    """publish_once.lua calls for `count` new events, spread over the shards as the order
    service spreads them."""
    calls = []
    for n in range(count):
        event_id, order_id = str(uuid7()), str(uuid7())
        on = shard(n % SHARDS)
        fields = stream_fields(event_id, order_id, b"{}", None)
        calls.append(([on.events, on.published_key(event_id)], [60_000, *fields]))
    return calls


async def test_scripts_a_node_lost_are_loaded_again_for_one_call_and_for_a_pipeline(
    redis_cluster: LocalRedisCluster, cluster: Redis
) -> None:
    """A promoted replica, or a restarted node, starts with an empty script cache: EVALSHA
    answers NOSCRIPT there, and acme_runtime.lua loads the script again on that node."""
    script = load_script("publish_once")
    first = await script.run_many(cluster, publish_calls(SHARDS))
    assert [added for added, _id in first] == [1] * SHARDS
    for node in redis_cluster.masters():
        with node.client() as client:
            client.script_flush()
    again = await script.run_many(cluster, publish_calls(2 * SHARDS))
    assert [added for added, _id in again] == [1] * 2 * SHARDS
    for node in redis_cluster.masters():
        with node.client() as client:
            client.script_flush()
    [keys, args] = publish_calls(1)[0]
    added, _entry_id = await script.run(cluster, keys, args)
    assert added == 1
    lengths = [int(await cluster.xlen(on.events)) for on in shards(SHARDS)]
    assert lengths == [4] + [3] * (SHARDS - 1), "1 + 2 + 1 events on shard 0, 1 + 2 elsewhere"


async def test_admin_commands_see_every_shard_across_the_nodes(
    redis_cluster: LocalRedisCluster,
    cluster: Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    database_url: str,
) -> None:
    """Dead letters on shards served by different masters are all listed (qualified ids), one
    is replayed onto its own shard, and `acme stats` reports each shard's lag."""
    monkeypatch.setenv("ACME_REDIS_URL", redis_cluster.seed_url)
    monkeypatch.setenv("ACME_DATABASE_URL", database_url)
    monkeypatch.setenv("ACME_OPERATOR", "ops-tester@host-1")
    monkeypatch.setenv("ACME_STREAM_SHARDS", str(SHARDS))
    masters = {redis_cluster.master_of_key(on.events).port for on in shards(SHARDS)}
    assert len(masters) == 3
    dead: dict[int, str] = {}
    for index in (0, 2, 4):  # shards 0, 2, 4: three different masters (see test_cluster.py)
        on = shard(index)
        streams = Streams(cluster, "seeder", shard=on)
        await streams.ensure_group()
        event_id, order_id = str(uuid.uuid4()), str(uuid.uuid4())
        flat = stream_fields(event_id, order_id, b"{}", None)
        await cluster.xadd(on.events, dict(zip(flat[::2], flat[1::2], strict=True)))
        [entry] = await streams.read_new(1, 100)
        dead_id = await streams.dead_letter(
            entry.entry_id, reason_class="smtp_permanent", reason="550 5.1.1 no such user"
        )
        assert dead_id is not None
        dead[index] = f"{index}/{dead_id}" if index else dead_id
    await Streams(cluster, "seeder", shard=shard(5)).ensure_group()
    await cluster.xadd(shard(5).events, {"n": "1"})  # one unread entry: lag 1 on shard 5

    capsys.readouterr()  # the seeding's own log lines
    code = await asyncio.to_thread(main, ["dead", "list", "--json"])
    listed = json.loads(capsys.readouterr().out)
    assert code == 0 and {e["dead_id"] for e in listed["entries"]} == set(dead.values())

    code = await asyncio.to_thread(main, ["dead", "replay", dead[2], "--why", "test", "--json"])
    replayed = json.loads(capsys.readouterr().out)
    assert code == 0 and replayed["outcomes"][0]["status"] == "replayed"
    assert replayed["outcomes"][0]["new_id"].startswith("2/")
    assert await cluster.xlen(shard(2).dead) == 0 and await cluster.xlen(shard(2).audit) == 1

    code = await asyncio.to_thread(main, ["stats", "--json"])
    stats = json.loads(capsys.readouterr().out)
    assert code == 0
    lags = {row["shard"]: row["lag"] for row in stats["shards"]}
    assert lags[5] == 1 and lags[2] == 1, lags  # shard 2: the replayed entry, unread
    assert stats["total"]["dead"] == 2
