"""Storage scenarios: what Redis and PostgreSQL keep per order, and that it stays bounded.

`storage`: 6,000 orders at 200/s, every e-mail awaited, then 30 s of quiet; Redis must hold
what is in flight only (targets from issue 17: at most 64 keys that are not streams, no stream
over 200 entries, at most 64 bytes of Redis memory per order left behind), and PostgreSQL's
bytes per order per table (indexes and partitions included) and WAL per order are reported.

`storage-soak`: 200/s for ACME_BENCH_STORAGE_SOAK_S seconds (900) with retentions of minutes
(SOAK_RETENTION_ENV: one-minute partitions, two minutes of timeline and ledger), sampled every
`SAMPLE_EVERY_S`: the tables that have a retention and Redis memory must be flat over the
second half of the run while `orders` (kept: business data) grows; every e-mail delivered once.

`storage-smoke`: 50/s for 3 s, 5 s of quiet: the CI test (tests/bench/) that the whole path
leaves nothing per order in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any, Final

from bench.figures import e2e_figures, orders_of, post_figures
from bench.report import base_report, target_row
from bench.scenarios import RunOptions, Scenario
from bench.stack import Stack
from bench.storage import per_order, storage_sample
from bench.system import Run, offer

__all__ = ["SAMPLE_EVERY_S", "SOAK_RETENTION_ENV", "storage"]

SAMPLE_EVERY_S: Final = 15.0
SETTLE_S: Final = 30.0
#: storage-smoke (the CI test of this scenario) waits less: its 150 orders settle in a second.
SMOKE_SETTLE_S: Final = 5.0
#: Retentions short enough that a soak of minutes crosses several boundaries.
SOAK_RETENTION_ENV: Final = {
    "ACME_PARTITION_INTERVAL_S": "60",
    "ACME_TIMELINE_RETENTION_S": "120",
    "ACME_LEDGER_RETENTION_S": "120",
    "ACME_JANITOR_INTERVAL_S": "10",
    "ACME_LEDGER_JANITOR_INTERVAL_S": "10",
    "ACME_IDEMPOTENCY_TTL_S": "60",
    "ACME_DEAD_RETENTION_S": "60",
    # The recipient cap's counters (one hash per window) must cross their window too.
    "ACME_RECIPIENT_WINDOW_S": "60",
}
#: The tables whose size must stop growing once the retention is crossed.
BOUNDED_TABLES: Final = ("order_timeline", "outbox", "idempotency_keys", "notify.sent_ledger")
MAX_NON_STREAM_KEYS: Final = 64
MAX_STREAM_ENTRIES: Final = 200
MAX_REDIS_BYTES_PER_ORDER: Final = 64.0


async def _sample_until(
    run: Run, stop: asyncio.Event, samples: list[dict[str, Any]], every_s: float
) -> None:
    while not stop.is_set():
        sample = await storage_sample(run.redis, run.stack.database_url)
        samples.append({"t_s": round(time.time() - run.t0_unix, 1), **sample})
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


def _slope_per_min(samples: list[dict[str, Any]], value: Any) -> float:
    """Least-squares slope of value(sample) against time, per minute."""
    points = [(s["t_s"], float(value(s))) for s in samples]
    if len(points) < 2:
        return float("nan")
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    var = sum((t - mean_t) ** 2 for t, _ in points)
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return 60.0 * cov / var if var else float("nan")


def _table_bytes(name: str) -> Any:
    return lambda s: s["postgres"]["tables"].get(name, {}).get("bytes", 0)


def _quarter_max(samples: list[dict[str, Any]], value: Any, quarter: int) -> float:
    """The largest value(sample) in one quarter (0-3) of the run's samples."""
    n = len(samples)
    part = samples[quarter * n // 4 : (quarter + 1) * n // 4] or samples[-1:]
    return float(max(value(s) for s in part))


def _growth(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per series: the least-squares slope over each half of the run, and the largest value
    of the second and of the last quarter. The slope of a table whose partitions drop once a
    minute is a sawtooth's, noisy with 15 s samples; the peaks are not: a bounded table's
    last-quarter peak is its second-quarter peak, a growing one's is about twice it."""
    half = len(samples) // 2
    series: dict[str, Any] = {"redis.used_memory": lambda s: s["redis"]["used_memory"]}
    for table in ("orders", *BOUNDED_TABLES):
        series[table] = _table_bytes(table)
    return {
        name: {
            "first_half_bytes_per_min": round(_slope_per_min(samples[: half + 1], value), 1),
            "second_half_bytes_per_min": round(_slope_per_min(samples[half:], value), 1),
            "second_quarter_max_bytes": _quarter_max(samples, value, 1),
            "last_quarter_max_bytes": _quarter_max(samples, value, 3),
        }
        for name, value in series.items()
    }


def _redis_targets(
    after: dict[str, Any], figures: dict[str, Any], *, per_order: bool
) -> list[dict[str, Any]]:
    """The Redis targets; bytes per order only when the orders are many enough to make the
    fixed costs (scripts, groups, a listpack node) vanish in the average (not in the smoke)."""
    redis = after["redis"]
    left = figures["redis_bytes_left_per_order"]
    rows = [
        target_row(
            f"<= {MAX_NON_STREAM_KEYS} Redis keys other than streams once quiet",
            f"{redis['non_stream_keys']} ({redis['keys_by_type']})",
            redis["non_stream_keys"] <= MAX_NON_STREAM_KEYS,
        ),
        target_row(
            f"no stream over {MAX_STREAM_ENTRIES} entries",
            f"longest {redis['longest_stream']} ({redis['streams']})",
            redis["longest_stream"] <= MAX_STREAM_ENTRIES,
        ),
    ]
    if per_order:
        rows.append(
            target_row(
                f"<= {MAX_REDIS_BYTES_PER_ORDER:g} B of Redis memory per order left behind",
                f"{left:.1f} B",
                left <= MAX_REDIS_BYTES_PER_ORDER,
            )
        )
    return rows


#: A bounded series' last-quarter peak is at most this much above its second-quarter peak.
FLAT_PEAK_RATIO: Final = 1.1


def _soak_targets(growth: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    rows = []
    for name in ("redis.used_memory", *BOUNDED_TABLES):
        info = growth[name]
        early, late = info["second_quarter_max_bytes"], info["last_quarter_max_bytes"]
        ratio = late / early if early else float("inf")
        rows.append(
            target_row(
                f"{name}: flat once past the retention (last-quarter peak <= "
                f"{FLAT_PEAK_RATIO:g} x second-quarter peak)",
                f"{late / 2**20:.1f} MiB vs {early / 2**20:.1f} MiB (x{ratio:.2f}); slope "
                f"{info['second_half_bytes_per_min']:+,.0f} B/min second half, "
                f"{info['first_half_bytes_per_min']:+,.0f} first",
                ratio <= FLAT_PEAK_RATIO,
            )
        )
    orders = growth["orders"]
    rows.append(
        target_row(
            "orders (kept, business data) keeps growing, for comparison",
            f"x{orders['last_quarter_max_bytes'] / max(orders['second_quarter_max_bytes'], 1):.2f}"
            " last-quarter peak over second-quarter peak",
            None,
        )
    )
    return rows


async def storage(
    stack: Stack, scenario: Scenario, options: RunOptions, notifiers: int
) -> dict[str, Any]:
    report = base_report(scenario, options, notifiers)
    soak = scenario.name == "storage-soak"
    if soak:
        report["config"]["env"].update(SOAK_RETENTION_ENV)
    run = await Run.open(stack, sink=True, rss_every_s=scenario.rss_every_s)
    samples: list[dict[str, Any]] = []
    stop = asyncio.Event()
    try:
        before = await storage_sample(run.redis, stack.database_url)
        sampler = asyncio.create_task(_sample_until(run, stop, samples, SAMPLE_EVERY_S))
        print(f"offering {scenario.rate_per_s:g}/s for {scenario.duration_s:g} s ...", flush=True)
        start_unix = time.time()
        loads = await offer(
            stack.http_port,
            scenario.rate_per_s,
            scenario.duration_s,
            f"storage-{os.getpid()}",
            3,
            connections=options.connections,
            api_key=stack.api_key,
        )
        orders = orders_of(loads)
        wanted = {o.order_id for o in orders if o.order_id and 200 <= o.status < 300}
        assert run.mail is not None
        await run.mail.wait_for(wanted, scenario.mail_drain_s, stack)
        end_unix = time.time()
        stop.set()
        await sampler
        settle_s = SMOKE_SETTLE_S if scenario.name == "storage-smoke" else SETTLE_S
        print(f"every e-mail in; {settle_s:g} s of quiet ...", flush=True)
        await asyncio.sleep(settle_s)
        run.mail.poll()
        after = await storage_sample(run.redis, stack.database_url)
    finally:
        stop.set()
        await run.close()
    post = post_figures(orders, loads)
    e2e = e2e_figures(orders, run.mail)
    figures = per_order(before, after, post["accepted"])
    report.update(
        window={"start_unix": start_unix, "end_unix": end_unix},
        post=post,
        e2e=e2e,
        storage={"before": before, "after": after, "per_order": figures},
        storage_samples=samples,
    )
    delivered = e2e["missing"] == 0 and post["not_2xx"] == 0 and e2e["duplicates"] == 0
    report["targets"] = [
        target_row(
            "every order accepted and its e-mail delivered once",
            f"missing {e2e['missing']}, duplicates {e2e['duplicates']}, not 2xx {post['not_2xx']}",
            delivered,
        ),
        *_redis_targets(after, figures, per_order=scenario.name != "storage-smoke"),
    ]
    report["headline"] = {
        "orders": post["accepted"],
        "non_stream_keys": after["redis"]["non_stream_keys"],
        "longest_stream": after["redis"]["longest_stream"],
        "redis_bytes_left_per_order": figures["redis_bytes_left_per_order"],
        "postgres_total_bytes_per_order": figures["postgres_total_bytes_per_order"],
        "wal_bytes_per_order": figures["wal_bytes_per_order"],
        "missing": e2e["missing"],
        "duplicates": e2e["duplicates"],
    }
    if soak:
        report["growth"] = _growth(samples)
        report["targets"] += _soak_targets(report["growth"])
    return report
