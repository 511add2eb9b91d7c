"""Real mail servers: odd replies, a relay misconfigured on our side, bounces, a strict HELO check.

The promise is that every e-mail goes out, once, whatever the relay says for a while:

* a `250` carrying NUL, Latin-1 bytes, several lines or 900 characters is an acceptance like any
  other: recorded once (cleaned), never sent again;
* a relay that refuses *us* (a real Postfix answering `554 5.7.1 <addr>: Relay access denied`
  to every RCPT for 30 s, as after a changed IP allowlist or lost credentials) dead-letters
  nothing: the breaker holds the mail, and it goes out by itself once the relay is fixed;
* genuine bounces (5 % of recipients unknown) are dead-lettered, exactly those, and the breaker
  never opens for the others;
* a refusal the classification cannot place, given to every recipient, is a storm: the storm
  detector holds the mail after the first few refusals, and puts those few back on the stream;
* Postfix refusing a HELO name that is not fully qualified holds the mail until the name is set.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Final

import pytest
from bench.loadgen import LoadResult
from bench.stack import iso_ms

from tests.chaos.conftest import StartSystem
from tests.chaos.harness import ChaosSystem, Scale, until
from tests.chaos.verdict import Intake, conclude

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.usefixtures("postfix_installed")]

#: What odd relays put in their 250 (sent as the Latin-1 bytes of each string).
ODD_250S: Final = (
    "250 2.0.0 Ok: queued as \u0000ABC",
    "250 2.0.0 Ok: accept\u00e9 (Latin-1, not UTF-8)",
    "250-2.0.0 first line\r\n250-second line\r\n250 2.0.0 queued",
    "250 2.0.0 " + "x" * 900,
)

#: One recipient in twenty: indices ending in 05, 25, 45, 65, 85 (and 005, 105 ...).
BOUNCING: Final = re.compile(r"^customer\d*[02468]5@")


def provider_refusals(system: ChaosSystem) -> int:
    """Sends the notifiers logged as refused by the relay because of us (reason smtp_provider)."""
    count = 0
    for child in system.stack.children:
        if not child.name.startswith("notifier"):
            continue
        for line in Path(child.log_path).read_bytes().splitlines():
            if b'"smtp_provider"' in line and b"send_failed_transient" in line:
                event = json.loads(line)
                count += event.get("reason_class") == "smtp_provider"
    return count


def load_orders(load: LoadResult) -> dict[str, float]:
    """Accepted order id -> its created_at (Unix seconds)."""
    return {
        r.order_id: iso_ms(r.created_at) / 1000
        for r in load.ok_records
        if r.order_id and r.created_at
    }


def held_during(system: ChaosSystem, orders: dict[str, float], fixed_at: float) -> int:
    """Orders created before the fix whose e-mail went out after it: the held backlog."""
    first = system.mail.first_at
    return sum(1 for o, at in orders.items() if at < fixed_at and first.get(o, 0) > fixed_at)


def drained_after(system: ChaosSystem, orders: dict[str, float], fixed_at: float) -> float:
    """Seconds from the fix to the last e-mail of an order created before it."""
    first = system.mail.first_at
    held = [first[o] for o, at in orders.items() if at < fixed_at and o in first]
    return round(max(held, default=fixed_at) - fixed_at, 2)


async def test_odd_250_replies_are_recorded_once_and_never_resent(
    start_system: StartSystem, scale: Scale
) -> None:
    """200 orders at 50/s, every 250 odd (NUL, Latin-1, multi-line, 900 chars): 0 duplicates."""
    system = await start_system(notifiers=2)
    await system.set_smtp(accept_replies=ODD_250S)
    load = await system.load(50.0, 4.0)
    verdict = await conclude(system, "odd-250-replies", scale, Intake.from_load(load))
    rows = await system.db_fetch("SELECT smtp_reply FROM notify.sent_ledger")
    assert verdict.accepted == 200
    assert len(rows) == verdict.delivered == verdict.accepted
    assert any("\\x00" in row["smtp_reply"] for row in rows), "NUL kept visible, not stored"
    assert verdict.duplicates == 0
    assert verdict.log_events.get("entry_handling_failed", 0) == 0, "no try was refunded"
    assert not verdict.problems()


async def test_a_relay_misconfigured_for_30_s_holds_the_mail_and_sends_it_by_itself(
    start_system: StartSystem, scale: Scale
) -> None:
    """3,000 orders at 50/s through Postfix; 30 s of Relay access denied, then fixed: nothing
    dead, nothing twice, every e-mail out with no operator action."""
    system = await start_system(notifiers=2, mta=True)
    fixed_at: list[float] = []

    async def misconfiguration() -> None:
        await asyncio.sleep(10.0)
        await system.misconfigure_relay()
        await asyncio.sleep(30.0)
        await system.fix_relay()
        fixed_at.append(time.time())

    load, _ = await asyncio.gather(system.load(50.0, 60.0), misconfiguration())
    verdict = await conclude(system, "relay-misconfigured-30s", scale, Intake.from_load(load),
                             report=False)  # fmt: skip
    refused = provider_refusals(system)
    undelivered = verdict.accepted - verdict.delivered
    verdict.extra.update(
        {
            "undelivered": undelivered,
            "provider_refusals": refused,
            "held_by_the_misconfiguration": held_during(system, load_orders(load), fixed_at[0]),
            "fix_to_last_held_email_s": drained_after(system, load_orders(load), fixed_at[0]),
        }
    )
    verdict.report(system.root)
    assert verdict.accepted == 3_000
    assert refused > 0, "the relay did refuse us"
    assert verdict.log_events.get("smtp_circuit_opened", 0) > 0, "the breaker held the mail"
    assert verdict.dead == 0 and undelivered == 0
    assert verdict.duplicates == 0
    assert not verdict.problems()


async def test_genuine_bounces_die_alone_and_never_open_the_breaker(
    start_system: StartSystem, scale: Scale
) -> None:
    """5 % of recipients get 550 5.1.1: exactly those are dead-lettered; the breaker stays shut."""
    system = await start_system(notifiers=2)
    await system.set_smtp(reject_rcpt=BOUNCING.pattern)
    load = await system.load(scale.rate_per_s, scale.duration_s)

    def expect_dead(email: str) -> str | None:
        return "invalid_recipient" if BOUNCING.search(email) else None

    verdict = await conclude(system, "bounces-5pct", scale, Intake.from_load(load),
                             expect_dead=expect_dead)  # fmt: skip
    assert 0.03 * verdict.accepted < verdict.dead_expected < 0.07 * verdict.accepted
    assert verdict.dead == verdict.dead_expected
    assert verdict.log_events.get("smtp_circuit_opened", 0) == 0
    assert provider_refusals(system) == 0
    assert not verdict.problems()


async def test_one_unplaceable_refusal_for_everyone_is_held_and_its_first_dead_rescinded(
    start_system: StartSystem, scale: Scale
) -> None:
    """Every RCPT refused for 15 s with a 550 5.7.1 that names no cause: the storm detector
    holds the mail after a few refusals, and the few dead-lettered before it go back on the
    stream by themselves: every e-mail out once the relay answers again, none dead."""
    system = await start_system(notifiers=2)
    fixed_at: list[float] = []

    async def storm() -> None:
        await asyncio.sleep(2.0)
        await system.set_smtp(
            reject_rcpt=".", reject_reply="550 5.7.1 <{address}>: Message refused by policy"
        )
        await asyncio.sleep(15.0)
        await system.set_smtp()
        fixed_at.append(time.time())

    load, _ = await asyncio.gather(system.load(scale.rate_per_s, scale.duration_s), storm())
    verdict = await conclude(system, "unplaceable-refusal-storm", scale,
                             Intake.from_load(load), report=False)  # fmt: skip
    verdict.extra.update(
        {
            "provider_refusals": provider_refusals(system),
            "fix_to_last_held_email_s": drained_after(system, load_orders(load), fixed_at[0]),
        }
    )
    verdict.report(system.root)
    assert verdict.extra["provider_refusals"] > 0, "the storm was recognised"
    assert verdict.log_events.get("dead_letters_rescinded", 0) > 0, "its first dead came back"
    assert verdict.dead == 0
    assert verdict.duplicates == 0
    assert not verdict.problems()


async def test_a_helo_name_postfix_refuses_holds_the_mail_until_it_is_set(
    start_system: StartSystem, scale: Scale
) -> None:
    """A bare EHLO name gets 504 5.5.2 from Postfix at every RCPT: nothing dead-lettered; with
    ACME_SMTP_HELO_NAME set (the notifiers restarted), everything goes out once."""
    system = await start_system(notifiers=1, mta=True, env={"ACME_SMTP_HELO_NAME": "localhost"})
    load = await system.load(20.0, 5.0)

    await until(lambda: provider_refusals(system) > 0, 30.0, "Postfix to refuse the bare HELO")
    system.env["ACME_SMTP_HELO_NAME"] = "notifier.acme.test"
    await system.sigterm_notifier(1)
    system.start_notifier(1)
    verdict = await conclude(system, "helo-not-fqdn", scale, Intake.from_load(load))
    assert verdict.dead == 0
    assert verdict.duplicates == 0
    assert not verdict.problems()
