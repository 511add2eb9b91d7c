"""What the system keeps: Redis memory and keys, PostgreSQL bytes per table and WAL.

`storage_sample` reads one snapshot from outside the services (INFO, SCAN + TYPE, XLEN; table
sizes summed over each table's partitions with pg_partition_tree, row counts, the WAL
position); `per_order` turns two snapshots into bytes per order. The storage scenarios
(bench/scenarios/storage.py) are built from these.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Final

import asyncpg
from redis.asyncio import Redis

from acme_runtime.channels import GLOBAL_TAG, PUBLISHED_PREFIX

__all__ = ["TABLES", "per_order", "storage_sample"]

#: The tables an order writes to, each with its partitions (if any) and indexes.
TABLES: Final = (
    "orders",
    "order_items",
    "order_timeline",
    "outbox",
    "idempotency_keys",
    "notify.sent_ledger",
    "notify.dead_letters",
)
#: A publish-once key of any shard: `{acme}:published:<id>` (shard 0), `{acme:3}:published:…`.
_PUBLISHED: Final = re.compile(
    rb"\{acme(?::\d+)?\}" + re.escape(PUBLISHED_PREFIX.removeprefix(GLOBAL_TAG).encode())
)
_SCAN_COUNT: Final = 1_000
#: A bound on the keys looked at per sample, so a runaway keyspace cannot stall the bench.
_MAX_KEYS: Final = 2_000_000

# pg_partition_tree lists nothing for a table that is not partitioned.
_SQL_TABLE = """
SELECT CASE WHEN c.relkind = 'p'
            THEN (SELECT coalesce(sum(pg_total_relation_size(relid)), 0)
                  FROM pg_partition_tree(c.oid))
            ELSE pg_total_relation_size(c.oid) END::bigint AS bytes,
       (SELECT count(*) FROM pg_partition_tree(c.oid) WHERE isleaf AND relid <> c.oid)
           AS partitions
FROM pg_class c WHERE c.oid = to_regclass($1)
"""


async def _redis_sample(redis: Redis) -> dict[str, Any]:
    memory: Any = await redis.info("memory")
    types: Counter[str] = Counter()
    streams: dict[str, int] = {}
    published = 0
    seen = 0
    cursor: Any = 0
    while True:
        cursor, keys = await redis.scan(cursor, count=_SCAN_COUNT)
        if keys:
            async with redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.type(key)
                kinds: list[Any] = await pipe.execute()
            for key, kind in zip(keys, kinds, strict=True):
                name = kind.decode() if isinstance(kind, bytes) else str(kind)
                types[name] += 1
                raw = key if isinstance(key, bytes) else key.encode()
                published += _PUBLISHED.match(raw) is not None
                if name == "stream":
                    streams[key.decode()] = int(await redis.xlen(key))
        seen += len(keys)
        if not int(cursor) or seen >= _MAX_KEYS:
            break
    return {
        "used_memory": int(memory["used_memory"]),
        "keys_by_type": dict(types),
        "non_stream_keys": sum(n for t, n in types.items() if t != "stream"),
        "publish_once_keys": published,
        "streams": streams,
        "longest_stream": max(streams.values(), default=0),
    }


async def _postgres_sample(database_url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        tables: dict[str, Any] = {}
        for table in TABLES:
            if await conn.fetchval("SELECT to_regclass($1)", table) is None:
                continue
            row = await conn.fetchrow(_SQL_TABLE, table)
            assert row is not None
            rows = await conn.fetchval(f"SELECT count(*) FROM {table}")  # noqa: S608 - our names
            tables[table] = {
                "bytes": int(row["bytes"]),
                "partitions": int(row["partitions"]),
                "rows": int(rows),
            }
        wal = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
        return {"tables": tables, "wal_bytes": int(wal)}
    finally:
        await conn.close()


async def storage_sample(redis: Redis, database_url: str) -> dict[str, Any]:
    """One snapshot of what Redis and PostgreSQL hold."""
    return {"redis": await _redis_sample(redis), "postgres": await _postgres_sample(database_url)}


def per_order(before: dict[str, Any], after: dict[str, Any], orders: int) -> dict[str, Any]:
    """Bytes per order between two snapshots: Redis memory left behind, each table, WAL."""
    n = max(orders, 1)
    pg_before, pg_after = before["postgres"], after["postgres"]
    tables = {
        name: round((info["bytes"] - pg_before["tables"].get(name, {}).get("bytes", 0)) / n, 1)
        for name, info in pg_after["tables"].items()
    }
    return {
        "orders": orders,
        "redis_bytes_left_per_order": round(
            (after["redis"]["used_memory"] - before["redis"]["used_memory"]) / n, 1
        ),
        "postgres_bytes_per_order": tables,
        "postgres_total_bytes_per_order": round(sum(tables.values()), 1),
        "wal_bytes_per_order": round((pg_after["wal_bytes"] - pg_before["wal_bytes"]) / n, 1),
    }
