"""The cluster the cluster tests run on is a real one: six nodes forming three masters with a
replica each over every slot, that redis-py's cluster client uses across masters, that fails a
killed master over to its replica without losing what was acknowledged by WAIT, and that takes
the killed node back as a replica."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from acme_runtime.redis_client import cluster_seeds
from tests.redis_cluster import CLUSTER_SLOTS, LocalRedisCluster, RedisNode

pytestmark = pytest.mark.slow

#: Node timeout 1.5 s plus the election: about 3 s here; the bound leaves room for a busy CI.
FAILOVER_BOUND_S = 15.0


@pytest.fixture
async def cluster_client(redis_cluster: LocalRedisCluster) -> AsyncIterator[RedisCluster]:
    """redis-py's cluster client, started from two of the seeds."""
    client = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in redis_cluster.seeds[:2]],
        decode_responses=True,
    )
    try:
        yield client
    finally:
        await client.aclose()


def keys_on(cluster: LocalRedisCluster, master: RedisNode, count: int) -> list[str]:
    """`count` keys, each with a hash tag of its own, all in slots `master` serves."""
    found: list[str] = []
    for n in range(20_000):
        key = f"{{tag{n}}}:value"
        if cluster.master_of_key(key).port == master.port:
            found.append(key)
            if len(found) == count:
                return found
    raise AssertionError(f"no {count} keys found on {master.name}")


async def write_acknowledged(master: RedisNode, values: dict[str, str]) -> int:
    """Writes `values` on `master` and WAITs for a replica, on one connection (WAIT covers the
    writes of its own connection only); returns how many replicas acknowledged them."""
    async with Redis(host=master.host, port=master.port, decode_responses=True) as direct:
        pipe = direct.pipeline(transaction=False)
        for key, value in values.items():
            pipe.set(key, value)
        pipe.execute_command("WAIT", 1, 5000)
        *_, acked = await pipe.execute()
    return int(acked)


async def test_six_nodes_form_three_masters_each_with_a_replica_over_every_slot(
    redis_cluster: LocalRedisCluster,
) -> None:
    masters = redis_cluster.masters()
    assert len(masters) == 3
    replicas = {master.name: redis_cluster.replicas_of(master) for master in masters}
    assert all(len(of) == 1 and of[0].role == "slave" for of in replicas.values()), replicas
    assert {n.name for n in masters} | {r[0].name for r in replicas.values()} == {
        n.name for n in redis_cluster.nodes
    }
    for node in redis_cluster.nodes:
        info = node.cluster_info()
        assert info["cluster_state"] == "ok", node
        assert int(info["cluster_slots_assigned"]) == CLUSTER_SLOTS
        assert int(info["cluster_slots_ok"]) == CLUSTER_SLOTS
        assert (int(info["cluster_known_nodes"]), int(info["cluster_size"])) == (6, 3)
        assert node.pid is not None
        os.kill(node.pid, 0)  # the pid is the live server's
    ports = ",".join(f"127.0.0.1:{node.port}" for node in redis_cluster.nodes)
    assert redis_cluster.seed_url == f"redis+cluster://{ports}"
    assert cluster_seeds(redis_cluster.seed_url) == redis_cluster.seeds  # as the services read it


async def test_a_cluster_client_writes_and_reads_hash_tags_served_by_different_masters(
    redis_cluster: LocalRedisCluster, cluster_client: RedisCluster
) -> None:
    masters = redis_cluster.masters()
    keys = {master.port: keys_on(redis_cluster, master, 1)[0] for master in masters}
    assert len(set(keys.values())) == 3
    for port, key in keys.items():
        assert await cluster_client.set(key, f"on {port}")
    for port, key in keys.items():
        assert await cluster_client.get(key) == f"on {port}"
        # Where it really is: on that master itself, not only somewhere in the cluster.
        async with Redis(host="127.0.0.1", port=port, decode_responses=True) as direct:
            assert await direct.get(key) == f"on {port}"


async def test_a_killed_master_is_replaced_by_its_replica_which_still_has_the_waited_for_keys(
    redis_cluster: LocalRedisCluster,
    cluster_client: RedisCluster,
    record_property: Callable[[str, object], None],
) -> None:
    master = redis_cluster.masters()[0]
    [replica] = redis_cluster.replicas_of(master)
    values = {key: f"value of {key}" for key in keys_on(redis_cluster, master, 5)}
    assert await write_acknowledged(master, values) >= 1
    assert await cluster_client.get(next(iter(values))) is not None  # the client knows the map

    redis_cluster.kill9(master)
    slots = {key_slot(key.encode()) for key in values}
    took_s = await asyncio.to_thread(redis_cluster.wait_promoted, slots, 30)
    record_property("failover_s", f"{took_s:.2f}")

    assert took_s < FAILOVER_BOUND_S
    assert all(redis_cluster.master_of_slot(slot) is replica for slot in slots)
    assert replica.role == "master"
    # The same client as before the kill: it finds the new master by itself.
    assert {key: await cluster_client.get(key) for key in values} == values


async def test_a_restarted_master_rejoins_as_a_replica_of_the_node_promoted_in_its_place(
    redis_cluster: LocalRedisCluster,
) -> None:
    master = redis_cluster.masters()[-1]
    [replica] = redis_cluster.replicas_of(master)
    old_id, old_port = master.node_id, master.port
    values = dict.fromkeys(keys_on(redis_cluster, master, 3), "kept")
    assert await write_acknowledged(master, values) >= 1
    redis_cluster.kill9(master)
    await asyncio.to_thread(redis_cluster.wait_promoted, {key_slot(k.encode()) for k in values})

    await asyncio.to_thread(redis_cluster.restart, master)

    assert master.role == "slave"
    assert redis_cluster.replicas_of(replica) == [master]
    with master.client() as direct:
        # The same node (its nodes.conf), on the same port, holding the data again.
        assert (direct.execute_command("CLUSTER", "MYID"), master.port) == (old_id, old_port)
        direct.execute_command("READONLY")
        assert [direct.get(key) for key in values] == list(values.values())
