"""Range partitions over a UUIDv7 column: created ahead, dropped whole once past retention.

Both services keep a table that grows at the order rate (the order service's `order_timeline`,
keyed by `order_id`; the notifier's `notify.sent_ledger`, keyed by `event_id`) as a natively
RANGE-partitioned table. A UUIDv7 starts with its 48-bit Unix milliseconds, so the smallest
UUIDv7 of an instant (that prefix, every other bit zero) is a partition bound, and a key's
partition is the time its id was made (docs/adr/0018-partitioned-tables.md).

The shape this module keeps, with no DEFAULT partition:

- a *floor* partition, `FROM (MINVALUE) TO (<lowest bound>)`, takes any id older than every
  other partition (a receipt of an order whose partition was dropped), so an insert into the
  past never fails; it is dropped with the expired partitions and made again above them, so
  what it caught lives at most one more round;
- partitions of `interval_s` on the Unix-epoch grid, from the floor up to at least
  `max(AHEAD_INTERVALS intervals, MIN_AHEAD_S)` past the current one; when no one made them for
  a while, one partition closes the gap to the current interval in one go;
- an id beyond the last partition (a clock far ahead, or a random UUID) is refused with
  `check_violation` (23514): no partition can hold it, and none is guessed.

`maintain()` is one round, under a per-table advisory lock that replicas try and skip when
another holds it. It reads the partitions, plans, then sends every CREATE and DROP as one
statement string (calls of acme_partition_create/drop, SECURITY DEFINER functions of the tables'
owner, so the services' roles own no table: ADR 0020): one implicit transaction, so the parent
table's ACCESS EXCLUSIVE lock (which creating and dropping a partition take) lasts only as long
as PostgreSQL runs them, never a round trip to this process. A short `lock_timeout` bounds how
long inserts may queue behind it; a round that cannot get the lock fails and the next one tries
again.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Final

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy
from prometheus_client import CollectorRegistry, Counter

from acme_runtime import clock

__all__ = [
    "AHEAD_INTERVALS",
    "MIN_AHEAD_S",
    "Maintenance",
    "Partition",
    "PartitionMetrics",
    "list_partitions",
    "maintain",
    "plan_ahead",
    "plan_expired",
    "uuid7_bound",
]

log = structlog.get_logger(__name__)

#: Partitions kept ready beyond the current one, at least ...
AHEAD_INTERVALS: Final = 2
#: ... and at least this far ahead, so tiny widths (a soak's minutes) survive a janitor outage.
MIN_AHEAD_S: Final = 3_600
#: How long a round waits for the parent table's lock before giving up until the next round.
LOCK_TIMEOUT_MS: Final = 500

_MS_SHIFT: Final = 80  # a UUIDv7's milliseconds are its top 48 of 128 bits
_BOUND: Final = re.compile(
    r"FOR VALUES FROM \((MINVALUE|'[0-9a-f-]{36}')\) TO \((MAXVALUE|'[0-9a-f-]{36}')\)"
)

Conn = asyncpg.Connection | PoolConnectionProxy


def uuid7_bound(ms: int) -> uuid.UUID:
    """The smallest UUIDv7 of Unix millisecond `ms`: every id made at `ms` or later is >= it,
    every id made before is < it."""
    return uuid.UUID(int=(ms & 0xFFFF_FFFF_FFFF) << _MS_SHIFT)


@dataclass(frozen=True, slots=True)
class Partition:
    """One partition: `lower <= key < upper`, as UUIDs; None is MINVALUE / MAXVALUE."""

    name: str
    lower: uuid.UUID | None
    upper: uuid.UUID | None

    @property
    def upper_ms(self) -> float:
        """The first millisecond this partition does not hold (inf for MAXVALUE)."""
        if self.upper is None:
            return math.inf
        return float(-(-self.upper.int >> _MS_SHIFT))


@dataclass(frozen=True, slots=True)
class Maintenance:
    """What a round did: partitions created and dropped, or why it did nothing."""

    created: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()
    skipped: str | None = None


@dataclass(frozen=True, slots=True)
class PartitionMetrics:
    """`acme_partitions_created_total{table}` and `acme_partitions_dropped_total{table}`."""

    created: Counter
    dropped: Counter

    @classmethod
    def register(cls, registry: CollectorRegistry) -> PartitionMetrics:
        return cls(
            Counter(
                "acme_partitions_created_total",
                "Partitions created ahead (or to close a gap) by this process, by table.",
                ["table"],
                registry=registry,
            ),
            Counter(
                "acme_partitions_dropped_total",
                "Partitions dropped by this process because their whole range was past the "
                "table's retention, by table.",
                ["table"],
                registry=registry,
            ),
        )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _parse_bound(text: str) -> uuid.UUID | None:
    return None if text.endswith("VALUE") else uuid.UUID(text.strip("'"))


async def _parent(conn: Conn, table: str) -> tuple[str, str, bool]:
    """(schema, name, is partitioned) of `table`, as PostgreSQL resolves the name."""
    row = await conn.fetchrow(
        "SELECT n.nspname, c.relname, c.relkind = 'p' AS partitioned FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1::regclass",
        table,
    )
    assert row is not None  # ::regclass raised for an unknown table
    return row["nspname"], row["relname"], row["partitioned"]


async def list_partitions(conn: Conn, table: str) -> list[Partition]:
    """The range partitions of `table` (from pg_inherits), lowest first. A DEFAULT partition,
    which this design never makes, is left out."""
    rows = await conn.fetch(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = $1::regclass",
        table,
    )
    found = []
    for row in rows:
        match = _BOUND.fullmatch(row["bound"])
        if match is not None:
            lower, upper = (_parse_bound(group) for group in match.groups())
            found.append(Partition(row["relname"], lower, upper))
    return sorted(found, key=lambda p: -1 if p.lower is None else p.lower.int)


def _partition_name(parent: str, lower_ms: int) -> str:
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime(lower_ms // 1000))
    return f"{parent}_p{stamp}"


def plan_ahead(
    existing: list[Partition], parent: str, *, interval_s: int, now_ms: int
) -> list[Partition]:
    """The partitions missing from the top one up to the horizon (a floor first, when there
    is nothing at all; one partition over a gap nobody filled)."""
    step = interval_s * 1000
    current = uuid7_bound(now_ms // step * step)
    ahead = max(AHEAD_INTERVALS, math.ceil(MIN_AHEAD_S * 1000 / step))
    horizon = uuid7_bound(now_ms // step * step + (1 + ahead) * step)
    missing: list[Partition] = []
    if not existing:
        missing.append(Partition(f"{parent}_floor", None, current))
        top = current
    elif any(p.upper is None for p in existing):
        return missing  # a MAXVALUE partition already holds everything above
    else:
        top = max(p.upper for p in existing if p.upper is not None)
    if top.int < current.int:
        # Nobody made partitions for a while: one partition closes the gap to now.
        missing.append(Partition(_partition_name(parent, top.int >> _MS_SHIFT), top, current))
        top = current
    while top.int < horizon.int:
        lower_ms = top.int >> _MS_SHIFT
        upper = uuid7_bound((lower_ms // step + 1) * step)
        missing.append(Partition(_partition_name(parent, lower_ms), top, upper))
        top = upper
    return missing


def plan_expired(
    partitions: list[Partition],
    parent: str,
    *,
    retention_s: int,
    now_ms: int,
    floor_has_rows: bool = False,
) -> tuple[list[Partition], Partition | None]:
    """The partitions whose whole range is older than `retention_s`, and the floor to make
    again below the lowest one left (None when nothing expires).

    The floor goes with them (its rows are older still) and is made again just below the
    lowest partition kept. On its own it goes only when it holds rows past the retention: an
    empty floor right below the lowest partition is already where it belongs, and dropping
    and making it again each round would take the parent's strongest lock for nothing."""
    cutoff_ms = now_ms - retention_s * 1000
    floors = [p for p in partitions if p.lower is None]
    ranged = [p for p in partitions if p.lower is not None]
    old = [p for p in ranged if p.upper_ms <= cutoff_ms]
    kept = sorted((p for p in ranged if p.upper_ms > cutoff_ms), key=lambda p: p.lower.int)  # type: ignore[union-attr]
    floor_old = any(p.upper_ms <= cutoff_ms for p in floors)
    if not kept or not (old or (floor_old and floor_has_rows)):
        return [], None  # never the last partitions, and never a gap under the lowest
    return floors + old, Partition(f"{parent}_floor", None, kept[0].lower)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _bound(bound: uuid.UUID | None) -> str:
    return "NULL" if bound is None else f"'{bound}'::uuid"


def _create(schema: str, parent: str, partition: Partition) -> str:
    table = _quote(f"{_ident(schema)}.{_ident(parent)}")
    return (
        f"SELECT acme_partition_create({table}::regclass, {_quote(partition.name)},"
        f" {_bound(partition.lower)}, {_bound(partition.upper)})"
    )


def _drop(schema: str, parent: str, partition: Partition) -> str:
    table = _quote(f"{_ident(schema)}.{_ident(parent)}")
    return f"SELECT acme_partition_drop({table}::regclass, {_quote(partition.name)})"


async def _floor_has_rows(
    conn: Conn, schema: str, parent: str, partitions: list[Partition]
) -> bool:
    """Whether the floor partition holds any row, read through the parent (the services'
    roles have privileges on the parent, not on each partition), pruned to the floor."""
    upper = next((p.upper for p in partitions if p.lower is None), None)
    if upper is None:
        return False
    table = f"{_ident(schema)}.{_ident(parent)}"
    keydef: str = await conn.fetchval("SELECT pg_get_partkeydef($1::regclass)", table)
    key = keydef[keydef.index("(") + 1 : keydef.rindex(")")]
    found = await conn.fetchval(
        f"SELECT EXISTS (SELECT 1 FROM {table} WHERE {_ident(key)} < $1)",  # noqa: S608 - names from the catalog, quoted
        upper,
    )
    return bool(found)


async def _round(
    conn: Conn, table: str, *, interval_s: int, retention_s: int, now_ms: int
) -> Maintenance:
    schema, parent, partitioned = await _parent(conn, table)
    if not partitioned:
        # Before the migration that partitions it (a new replica during a rolling deploy).
        return Maintenance(skipped="not partitioned yet (run `acme migrate`)")
    existing = await list_partitions(conn, table)
    created = plan_ahead(existing, parent, interval_s=interval_s, now_ms=now_ms)
    floor_rows = await _floor_has_rows(conn, schema, parent, existing)
    expired, floor = plan_expired(
        existing + created,
        parent,
        retention_s=retention_s,
        now_ms=now_ms,
        floor_has_rows=floor_rows,
    )
    statements = [_create(schema, parent, p) for p in created]
    statements += [_drop(schema, parent, p) for p in expired]
    if floor is not None:
        statements.append(_create(schema, parent, floor))
    if statements:
        # One simple query is one implicit transaction and one round trip: the parent's
        # ACCESS EXCLUSIVE lock is held while PostgreSQL runs the DDL, never while it waits
        # for this process (a stalled event loop must not hold up the inserts). The DDL runs
        # in acme_partition_create/drop, as the tables' owner: the service's own role owns
        # nothing (acme_runtime.migrate, docs/adr/0020-least-privilege-credentials.md).
        await conn.execute(f"SET lock_timeout = {LOCK_TIMEOUT_MS}")
        await conn.execute("; ".join(statements))
    return Maintenance(tuple(p.name for p in created), tuple(p.name for p in expired))


async def maintain(
    pool: asyncpg.Pool,
    table: str,
    *,
    interval_s: int,
    retention_s: int,
    metrics: PartitionMetrics | None = None,
    now_ms: int | None = None,
    wait: bool = False,
) -> Maintenance:
    """One round for `table`: create ahead, then drop what is past retention. Safe to run on
    every replica at once: the one that gets the table's advisory lock does it, the others
    skip, or with `wait` (a process starting, which must not write before the partitions it
    writes to exist) wait for it and then check for themselves. Logs and counts what it
    changed."""
    now = clock.now_ms() if now_ms is None else now_ms
    key = f"acme.partitions:{table}"
    async with pool.acquire() as conn:
        if wait:
            await conn.execute("SELECT pg_advisory_lock(hashtext($1))", key)
        elif not await conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", key):
            return Maintenance(skipped="another replica holds the lock")
        try:
            done = await _round(
                conn, table, interval_s=interval_s, retention_s=retention_s, now_ms=now
            )
        finally:
            # Pooled connections keep no session state (acme_runtime.pg.reset_connection).
            await conn.execute("RESET lock_timeout")
            await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", key)
    if done.created:
        log.info("partitions_created", table=table, partitions=list(done.created))
    if done.dropped:
        log.info(
            "partitions_dropped",
            table=table,
            partitions=list(done.dropped),
            retention_s=retention_s,
        )
    if metrics is not None:
        metrics.created.labels(table).inc(len(done.created))
        metrics.dropped.labels(table).inc(len(done.dropped))
    return done
