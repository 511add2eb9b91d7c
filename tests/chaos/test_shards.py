"""Sharded event streams (ACME_STREAM_SHARDS) on one Redis node, under faults and a re-shard.

The events of one deployment spread over every shard's stream, notifiers killed mid-load lose
nothing on any shard, and changing the number of shards under load (a rolling restart of every
process with the new value) loses nothing and sends nothing twice: events already published
stay on their shard (re-drives too, through outbox.shard), which the notifiers keep serving.
"""

from __future__ import annotations

import asyncio

import pytest
from bench.stack import HOST

from tests.chaos.client import run_retrying_load
from tests.chaos.conftest import StartSystem
from tests.chaos.harness import ChaosSystem, Scale
from tests.chaos.verdict import Intake, conclude

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


async def published_per_shard(system: ChaosSystem) -> dict[int, int]:
    """Events first published on each shard, from the orders' timelines."""
    rows = await system.db_fetch(
        "SELECT (detail->>'shard')::int AS shard, count(*) AS n FROM order_timeline"
        " WHERE kind = 'published' GROUP BY 1"
    )
    return {int(r["shard"]): int(r["n"]) for r in rows}


async def test_events_spread_over_every_shard_and_notifier_kills_lose_nothing(
    start_system: StartSystem, scale: Scale
) -> None:
    """4 shards, 2 notifiers, one killed twice under load: every shard carries events, every
    order is e-mailed exactly once."""
    system = await start_system(notifiers=2, shards=4)

    async def kill_twice() -> None:
        for slot in (1, 2):
            await asyncio.sleep(scale.duration_s / 3)
            await system.kill_notifier(slot, restart_after_s=0.5)

    load, _ = await asyncio.gather(system.load(scale.rate_per_s, scale.duration_s), kill_twice())
    verdict = await conclude(
        system, "shards-4-kill-notifiers", scale, Intake.from_load(load), confirm_timeout_s=45.0
    )
    spread = await published_per_shard(system)
    assert set(spread) == {0, 1, 2, 3}, spread
    assert min(spread.values()) > 0.15 * verdict.accepted, f"uneven spread {spread}"
    assert verdict.accepted == verdict.sent
    assert not verdict.problems(max_e2e_s=30.0)


@pytest.mark.parametrize(("before", "after"), [(2, 4), (4, 2)])
async def test_changing_the_shard_count_under_load_loses_nothing_and_sends_nothing_twice(
    start_system: StartSystem, scale: Scale, before: int, after: int
) -> None:
    """A rolling restart of every process from `before` to `after` shards mid-load (the
    relay, each notifier, then the API): orders placed before go out from the old shards,
    the rest from the new ones, each exactly once."""
    system = await start_system(notifiers=2, shards=before)
    # Growing is one rollout: an event written to a new shard before its readers restart
    # waits for them. Shrinking keeps reading the shards being retired (receipts too) until
    # they have drained (docs/runbook.md, "Changing the number of shards").
    rollout = {"ACME_STREAM_SHARDS": str(after)}
    if after < before:
        rollout["ACME_STREAM_SHARDS_READ"] = str(before)

    async def reshard() -> None:
        await asyncio.sleep(scale.duration_s / 3)
        await system.rolling_restart(rollout)

    run, _ = await asyncio.gather(
        run_retrying_load(HOST, system.stack.http_port, scale.rate_per_s, scale.duration_s,
                          key_prefix=f"reshard-{before}-{after}", seed=5,
                          api_key=system.stack.api_key),
        reshard(),
    )  # fmt: skip
    system.shards = max(before, after)  # the verdict looks at every shard that held events
    verdict = await conclude(
        system, f"reshard-{before}-{after}", scale, Intake.from_retrying(run),
        confirm_timeout_s=45.0,
    )  # fmt: skip
    spread = await published_per_shard(system)
    assert set(spread) == set(range(max(before, after))), spread
    assert verdict.accepted == verdict.sent
    assert verdict.duplicates == 0
    assert not verdict.problems(max_e2e_s=30.0)
