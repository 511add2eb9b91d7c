"""What the servers say about themselves after a run: PostgreSQL's sessions and table churn,
and the API's garbage-collection pauses from its own /metrics (on its metrics port)."""

from __future__ import annotations

import asyncio
import math
import urllib.request
from typing import Any

import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from bench.stack import HOST

__all__ = ["gc_pauses_of", "postgres_backends", "postgres_tables"]


async def postgres_backends(database_url: str) -> dict[int, str]:
    """PostgreSQL's processes by pid: the client's application_name for a session (acme-orders
    is the API and the relay, acme-notifier the notifiers), else the backend type."""
    try:
        conn = await asyncpg.connect(database_url, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return {}
    try:
        rows = await conn.fetch("SELECT pid, application_name, backend_type FROM pg_stat_activity")
    except asyncpg.PostgresError:
        return {}
    finally:
        await conn.close()
    return {
        int(r["pid"]): (r["application_name"] or r["backend_type"] or "?")
        for r in rows
        if r["pid"] is not None
    }


async def postgres_tables(database_url: str) -> dict[str, Any]:
    """Row churn and vacuum state of the tables an order touches (pg_stat_user_tables)."""
    try:
        conn = await asyncpg.connect(database_url, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        return {"error": repr(exc)}
    try:
        rows = await conn.fetch(
            "SELECT schemaname || '.' || relname AS name, n_live_tup, n_dead_tup, n_tup_ins,"
            " n_tup_upd, n_tup_hot_upd, n_tup_del, seq_scan, seq_tup_read, idx_scan,"
            " autovacuum_count, pg_total_relation_size(relid) AS bytes"
            " FROM pg_stat_user_tables ORDER BY n_dead_tup DESC"
        )
    except asyncpg.PostgresError as exc:
        return {"error": repr(exc)}
    finally:
        await conn.close()
    return {r["name"]: {k: v for k, v in dict(r).items() if k != "name"} for r in rows}


async def gc_pauses_of(port: int) -> dict[str, dict[str, float]]:
    """The API's `acme_gc_pause_seconds` per generation: count, total seconds, and the bucket
    bound the slowest collection fell under (from its own /metrics, on loopback)."""

    def scrape() -> str:
        url = f"http://{HOST}:{port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    try:
        text = await asyncio.to_thread(scrape)
    except OSError:
        return {}
    pauses: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "acme_gc_pause_seconds":
            continue
        buckets: dict[str, list[tuple[float, float]]] = {}
        for sample in family.samples:
            generation = sample.labels.get("generation", "?")
            entry = pauses.setdefault(generation, {})
            if sample.name.endswith("_count"):
                entry["count"] = sample.value
            elif sample.name.endswith("_sum"):
                entry["total_s"] = round(sample.value, 4)
            elif sample.name.endswith("_bucket"):
                buckets.setdefault(generation, []).append(
                    (float(sample.labels["le"]), sample.value)
                )
        for generation, bounds in buckets.items():
            total = pauses[generation].get("count", 0.0)
            slowest = min((le for le, n in bounds if n >= total), default=math.inf)
            pauses[generation]["slowest_under_s"] = slowest
    return pauses
