"""A rolling deployment of the notifiers under load: SIGTERM each one, replace it.

SIGTERM means: stop reading, finish the sends in flight (ACME_NOTIFY_GRACE_S), exit 0. The
SMTP server takes 0.5 s per message (enough connections per replica keep up with the load) so
that every replica has sends in flight when it is told to stop. A graceful stop must cost
nothing: no e-mail lost, none sent twice.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.chaos.conftest import StartSystem
from tests.chaos.harness import ChaosSystem, Scale
from tests.chaos.verdict import Intake, conclude

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

_GRACE_S = 10.0


def _sent_while_draining(log_path: Path) -> int:
    """E-mails a replica finished after it began draining (it had work in flight)."""
    draining = False
    sent = 0
    for line in log_path.read_text().splitlines():
        try:
            event = json.loads(line).get("event")
        except ValueError:
            continue
        draining = draining or event == "shutdown_draining"
        sent += draining and event == "email_sent"
    return sent


async def _roll(system: ChaosSystem, exits: list[tuple[str, int, float, int]]) -> None:
    """Replaces notifier 1 surge-first (new one up, then SIGTERM the old), then notifier 2
    stop-first (SIGTERM, then its replacement)."""

    async def stop(slot: int) -> None:
        child = system.slots[slot]
        code, took_s = await system.sigterm_notifier(slot)
        exits.append((child.name, code, took_s, _sent_while_draining(child.log_path)))

    await asyncio.sleep(2.0)
    await system.wait_started(system.start_notifier(3), "notifier_started")
    await stop(1)
    await asyncio.sleep(2.0)
    await stop(2)
    await system.wait_started(system.start_notifier(4), "notifier_started")


async def test_rolling_restart_of_every_notifier_loses_and_duplicates_nothing(
    start_system: StartSystem, scale: Scale
) -> None:
    """Rolling SIGTERM of every notifier under load: each drains and exits 0; no loss, no dup."""
    # Little's law: rate x 0.5 s in flight, over 2 replicas, with 30 % headroom (32 at 50/s).
    pool = str(max(32, round(scale.rate_per_s * 0.5 * 1.3 / 2)))
    system = await start_system(
        notifiers=2,
        env={
            "ACME_NOTIFY_GRACE_S": str(_GRACE_S),
            "ACME_SMTP_POOL_SIZE": pool,
            "ACME_NOTIFY_CONCURRENCY": pool,
        },
    )
    await system.set_smtp(delay_s=0.5)
    exits: list[tuple[str, int, float, int]] = []
    load, _ = await asyncio.gather(
        system.load(scale.rate_per_s, scale.duration_s), _roll(system, exits)
    )
    verdict = await conclude(
        system,
        "graceful-rollout",
        scale,
        Intake.from_load(load),
        extra={"exits (name, code, seconds, sent while draining)": exits},
    )
    assert [code for _name, code, _s, _d in exits] == [0, 0]
    assert all(took_s < _GRACE_S for _n, _c, took_s, _d in exits)
    assert sum(drained for *_rest, drained in exits) > 0, "they had sends in flight"
    assert verdict.log_events.get("shutdown_cancelling", 0) == 0, "nothing was cut off"
    assert verdict.duplicates == 0
    assert not verdict.problems(max_e2e_s=30.0)
