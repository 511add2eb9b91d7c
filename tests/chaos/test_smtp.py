"""The SMTP relay misbehaving under load: an outage, flapping, a slow server.

The notifier must deliver everything in the end, dead-letter nothing that could be delivered,
keep its retry budget for e-mail problems (an outage is refunded, the breaker paces retries),
and send twice only when the server itself made the outcome unknowable (stored the message and
hung up before its reply).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.chaos.conftest import StartSystem
from tests.chaos.harness import Scale
from tests.chaos.verdict import Intake, conclude

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

#: The confirmation e-mail's promise: sent within 5 minutes of the order.
SLA_S = 300.0


async def test_smtp_outage_then_recovery_delivers_everything_within_the_sla(
    start_system: StartSystem, scale: Scale
) -> None:
    """SMTP 421 then refused for outage_s: all sent once after, none dead, oldest within SLA."""
    system = await start_system(notifiers=2)
    recovered_at: list[float] = []

    async def outage() -> None:
        await asyncio.sleep(2.0)
        await system.set_smtp(mode="greet421")
        await asyncio.sleep(scale.outage_s / 2)
        await system.set_smtp(mode="down")
        await asyncio.sleep(scale.outage_s / 2)
        await system.set_smtp(mode="up")
        recovered_at.append(time.time())

    load, _ = await asyncio.gather(system.load(scale.rate_per_s, scale.duration_s), outage())
    verdict = await conclude(system, "smtp-outage", scale, Intake.from_load(load), report=False)
    drained_s = verdict.last_email_at - recovered_at[0]
    verdict.extra["backlog_drained_s_after_recovery"] = round(drained_s, 2)
    verdict.report(system.root)
    assert verdict.dead == 0, "an outage must not use up any e-mail's retry budget"
    assert verdict.log_events.get("smtp_circuit_opened", 0) > 0, "the breaker held them back"
    assert verdict.duplicates == 0
    assert not verdict.problems(max_e2e_s=min(SLA_S, scale.outage_s + 30.0))


async def test_smtp_flapping_duplicates_only_where_the_server_hung_up_after_storing(
    start_system: StartSystem, scale: Scale
) -> None:
    """Flapping SMTP: all sent, duplicates only on orders the server stored then hung up on."""
    system = await start_system(notifiers=2)
    await system.set_smtp(tempfail=0.30, drop=0.05, accept_close=0.03, seed=4)
    load = await system.load(scale.rate_per_s, scale.duration_s)
    verdict = await conclude(system, "smtp-flapping", scale, Intake.from_load(load))
    hung_up_after_storing = verdict.faults.get("smtp accept_close", 0)
    assert verdict.faults.get("smtp tempfail", 0) > 0.2 * verdict.accepted
    assert hung_up_after_storing > 0
    assert verdict.duplicates <= hung_up_after_storing
    assert verdict.dead == 0
    assert not verdict.problems(max_e2e_s=60.0)


async def test_slow_smtp_keeps_throughput_and_nothing_is_claimed_twice(
    start_system: StartSystem, scale: Scale
) -> None:
    """SMTP taking 2 s per message: throughput keeps up and no slow send is claimed or resent."""
    # Little's law: rate x 2 s in flight, over 2 replicas, with 30 % headroom.
    per_replica = str(max(64, round(scale.rate_per_s * 2.0 * 1.3 / 2)))
    system = await start_system(
        notifiers=2,
        env={
            "ACME_SMTP_TIMEOUT_S": "10",
            "ACME_NOTIFY_GRACE_S": "15",
            "ACME_NOTIFY_CONCURRENCY": per_replica,
            "ACME_SMTP_POOL_SIZE": per_replica,
        },
    )
    await system.set_smtp(delay_s=2.0)
    load = await system.load(scale.rate_per_s, scale.duration_s)
    verdict = await conclude(system, "smtp-slow-2s", scale, Intake.from_load(load))
    assert verdict.duplicates == 0
    assert verdict.log_events.get("entry_claimed", 0) == 0, "no slow send was claimed"
    assert verdict.emails_per_s >= 0.8 * scale.rate_per_s
    assert not verdict.problems(max_e2e_s=10.0)
