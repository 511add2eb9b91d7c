"""The verdict of a chaos scenario: what became of every order a client was told was accepted.

For each accepted order, from the SMTP server's record, PostgreSQL and the dead-letter stream:
exactly one e-mail (extra copies are duplicates), or, where the scenario makes delivery
impossible, no e-mail and a dead letter with the expected permanent reason; anything else is
lost or a wrong outcome. Every order row must be whole (items and its `created` timeline entry),
the order service must have learnt the outcome (status `sent`/`dead`, no outbox row left), and
the database must hold no order no client was told about.

A duplicate is *explained* only by an ambiguity this run really had: the SMTP server stored the
message and hung up before its reply (it logged `accept_close` for that order), or the first copy
was accepted within `AMBIGUITY_WINDOW_S` before (or `AFTER_KILL_S` after) a notifier was
SIGKILLed, or while PostgreSQL (the send ledger) was down; that is the documented window "SMTP
accepted, ledger insert not committed". A Redis master killed adds its own window, from the kill
until its replica was promoted: a delivery the replica never received makes the entry new again
there, and a second notifier may read it while the first is still sending it. An unexplained
duplicate fails the scenario.

`Verdict.lines()` is the table the scenario prints; `Verdict.record()` appends one JSON line to
ACME_CHAOS_RESULTS (default bench/results/chaos.jsonl, git-ignored) for docs/reliability.md.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from bench.loadgen import LoadResult
from bench.stack import git_revision, iso_ms, log_events, nearest_rank

from acme_runtime.channels import NOTIFIER_GROUP, RECEIPTS_GROUP, shards
from acme_runtime.redis_client import open_redis
from tests.chaos.client import RetryRun
from tests.chaos.harness import ChaosSystem, Scale, pending_count

__all__ = [
    "AMBIGUITY_WINDOW_S",
    "ExpectDead",
    "Intake",
    "Verdict",
    "conclude",
    "judge",
    "results_path",
]

#: How long after SMTP accepted a message a crash may still leave the ledger without its row.
AMBIGUITY_WINDOW_S: Final = 1.0
#: How long after a notifier's SIGKILL the SMTP server may still store what it had sent.
AFTER_KILL_S: Final = 0.5
_DEFAULT_RESULTS: Final = Path(__file__).resolve().parents[2] / "bench" / "results" / "chaos.jsonl"


def results_path() -> Path:
    """Where scenario results are appended: ACME_CHAOS_RESULTS, else bench/results/."""
    return Path(os.environ.get("ACME_CHAOS_RESULTS") or _DEFAULT_RESULTS)


#: Log events worth counting across every process of the run.
NOTABLE_EVENTS: Final = (
    "actor_crashed",
    "entry_handling_failed",
    "entry_claimed",
    "duplicate_suppressed",
    "redrive_republished",
    "relay_failed",
    "redrive_failed",
    "read_failed",
    "fast_path_publish_failed",
    "smtp_circuit_opened",
    "entry_dead_lettered",
    "poison_entry_dead_lettered",
    "consumer_group_vanished_recreating",
    "receipts_group_vanished_recreating",
    "receipts_failed",
    "shutdown_cancelling",
    "database_unavailable",
    "unhandled_error",
    "sent_not_recorded",
    "sent_not_acknowledged",
    "dead_letters_rescinded",
    "periodic_tick_failed",
    "entry_handling_crashed",
)
_DEAD_SCAN: Final = 200_000

#: customer e-mail -> the reason_class its order must be dead-lettered with, or None (deliver).
ExpectDead = Callable[[str], str | None]


@dataclass(frozen=True)
class Intake:
    """What the clients were told: orders sent, and those accepted (order id -> created_at)."""

    sent: int
    accepted: dict[str, str]
    rejected: int = 0
    failed: int = 0

    @classmethod
    def from_load(cls, result: LoadResult) -> Intake:
        counts = result.status_counts()
        accepted = {
            r.order_id: r.created_at for r in result.ok_records if r.order_id and r.created_at
        }
        return cls(len(result.records), accepted, counts["4xx"], len(result.records)
                   - len(result.ok_records) - counts["4xx"])  # fmt: skip

    @classmethod
    def from_retrying(cls, run: RetryRun) -> Intake:
        accepted = {o.order_id: o.created_at for o in run.accepted if o.order_id and o.created_at}
        rejected = sum(1 for o in run.orders if 400 <= o.status < 500)
        return cls(len(run.orders), accepted, rejected, len(run.orders) - len(accepted) - rejected)

    def plus(self, other: Intake) -> Intake:
        return Intake(self.sent + other.sent, {**self.accepted, **other.accepted},
                      self.rejected + other.rejected, self.failed + other.failed)  # fmt: skip


@dataclass
class Verdict:
    scenario: str
    scale: str
    notifiers: int
    sent: int
    accepted: int
    rejected: int
    failed: int
    delivered: int = 0
    emails: int = 0
    duplicates: int = 0
    duplicates_explained: int = 0
    dead: int = 0
    dead_expected: int = 0
    poison_dead: int = 0
    lost: int = 0
    #: No e-mail but a dead letter the scenario did not expect (e.g. the few refusals a storm
    #: detector needs before it tells a misconfigured relay from bounces).
    dead_unexpected: int = 0
    wrong_outcome: int = 0
    status_mismatches: int = 0
    outbox_left: int = 0
    unknown_orders: int = 0
    partial_orders: int = 0
    events_pending: int = 0
    receipts_pending: int = 0
    #: Publish-once keys still in Redis, and the events stream's length, when judged: Redis
    #: keeps a key per event only while it is in flight (its outbox row still there).
    published_keys_left: int = 0
    events_length: int = 0
    e2e_s: dict[str, float] = field(default_factory=dict)
    #: SMTP accepted -> ledger row written, ms: how wide the duplicate window really was.
    ledger_gap_ms: dict[str, float] = field(default_factory=dict)
    #: First to last e-mail of the accepted orders.
    emails_per_s: float = 0.0
    last_email_at: float = 0.0
    faults: dict[str, int] = field(default_factory=dict)
    log_events: dict[str, int] = field(default_factory=dict)
    waits: dict[str, float] = field(default_factory=dict)
    #: The faults as they happened, seconds after the system started.
    timeline: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    @property
    def unexplained_duplicates(self) -> int:
        return self.duplicates - self.duplicates_explained

    def problems(
        self,
        *,
        receipts: bool = True,
        max_e2e_s: float | None = None,
        max_dead_unexpected: int = 0,
    ) -> list[str]:
        """Every broken guarantee, as a sentence; empty when the scenario held."""
        checks = [
            (self.lost == 0, f"{self.lost} accepted orders got no e-mail and no dead letter"),
            (self.dead_unexpected <= max_dead_unexpected,
             f"{self.dead_unexpected} orders dead-lettered unexpectedly (at most "
             f"{max_dead_unexpected} allowed)"),
            (self.wrong_outcome == 0, f"{self.wrong_outcome} orders with the wrong outcome"),
            (self.unexplained_duplicates == 0,
             f"{self.unexplained_duplicates} duplicate e-mails outside the documented window"),
            (self.partial_orders == 0, f"{self.partial_orders} partial orders in the database"),
            (self.unknown_orders == 0,
             f"{self.unknown_orders} orders in the database that no client was told about"),
        ]  # fmt: skip
        if receipts:
            checks += [
                (self.status_mismatches == 0,
                 f"{self.status_mismatches} orders whose status does not match their e-mail"),
                (self.outbox_left == 0, f"{self.outbox_left} outbox rows never confirmed"),
                (self.published_keys_left <= self.outbox_left,
                 f"{self.published_keys_left} publish-once keys outlive their events "
                 f"({self.outbox_left} events still in flight)"),
            ]  # fmt: skip
        if max_e2e_s is not None:
            worst = self.e2e_s.get("max", math.nan)
            checks.append((worst <= max_e2e_s, f"e2e max {worst:.1f} s over {max_e2e_s:g} s"))
        found = [message for ok, message in checks if not ok]
        return found + (self.examples[:5] if found else [])

    def lines(self) -> list[str]:
        e2e = self.e2e_s
        faults = ", ".join(f"{k} x{v}" for k, v in sorted(self.faults.items())) or "none"
        return [
            f"== chaos {self.scenario} (scale {self.scale}, {self.notifiers} notifiers) ==",
            f"faults    {faults}",
            f"orders    sent {self.sent}  accepted {self.accepted}  rejected {self.rejected}  "
            f"failed {self.failed}  unknown-to-clients {self.unknown_orders}  "
            f"partial {self.partial_orders}",
            f"e-mails   delivered {self.delivered} ({self.emails} received)  duplicates "
            f"{self.duplicates} (explained {self.duplicates_explained})  dead {self.dead} "
            f"(expected {self.dead_expected}, unexpected {self.dead_unexpected}, poison "
            f"{self.poison_dead})  lost {self.lost}  wrong {self.wrong_outcome}",
            f"e2e       p50 {e2e.get('p50', math.nan):.2f} s  p99 {e2e.get('p99', math.nan):.2f} s"
            f"  max {e2e.get('max', math.nan):.2f} s  (created_at -> SMTP accepted); "
            f"{self.emails_per_s:g} e-mails/s first to last",
            f"window    SMTP accepted -> ledger row: p50 {self.ledger_gap_ms.get('p50', 0):g} ms"
            f"  p99 {self.ledger_gap_ms.get('p99', 0):g} ms  max "
            f"{self.ledger_gap_ms.get('max', 0):g} ms",
            f"orders db status mismatches {self.status_mismatches}, outbox left "
            f"{self.outbox_left}, pending events {self.events_pending} receipts "
            f"{self.receipts_pending}; waits {self.waits}",
            f"redis     publish-once keys left {self.published_keys_left}, events stream "
            f"{self.events_length} entries",
            f"logs      {self.log_events}",
            *(f"extra     {k}: {v}" for k, v in self.extra.items()),
        ]

    def report(self, root: Path) -> None:
        """Prints the table and appends the JSON line to the results file."""
        print("\n" + "\n".join(self.lines()) + f"\nlogs      {root / 'logs'}", flush=True)
        self.record()

    def record(self) -> None:
        document = {
            "at": datetime.now().astimezone().isoformat(timespec="seconds"),
            "git": git_revision(),
            "command": " ".join(sys.orig_argv),
            **asdict(self),
        }
        path = results_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(document, default=str) + "\n")


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


async def _redis_state(url: str, count: int) -> tuple[dict[str, list[str]], int, int, int]:
    """Dead letters by order id (their reason classes), poison entries, pending events and
    pending receipts, over the `count` shards."""
    redis = open_redis(url, socket_timeout=10)
    by_order: dict[str, list[str]] = {}
    poison = 0
    try:
        for on in shards(count):
            entries: Any = await redis.xrange(on.dead, count=_DEAD_SCAN)
            for _id, fields in entries:
                reason_class = _text(fields.get(b"reason_class", b""))
                order_id = _text(fields.get(b"order_id", b""))
                if reason_class == "poison":
                    poison += 1
                if order_id:
                    by_order.setdefault(order_id, []).append(reason_class)
    finally:
        await redis.aclose()
    return (
        by_order,
        poison,
        await pending_count(url, [on.events for on in shards(count)], NOTIFIER_GROUP),
        await pending_count(url, [on.receipts for on in shards(count)], RECEIPTS_GROUP),
    )


async def _redis_leftovers(url: str, count: int) -> tuple[int, int]:
    """(publish-once keys, events streams' length) left in Redis over the `count` shards."""
    redis = open_redis(url, socket_timeout=10)
    keys = length = 0
    try:
        for on in shards(count):
            match = f"{on.published_prefix}*"
            keys += len([key async for key in redis.scan_iter(match=match, count=1_000)])
            length += int(await redis.xlen(on.events))
    finally:
        await redis.aclose()
    return keys, length


def _windows(system: ChaosSystem) -> list[tuple[float, float]]:
    """When a just-accepted e-mail could miss its ledger row (notifier kills, ledger down), or
    be read a second time (a Redis master lost with deliveries not yet replicated: from the
    kill until its replica was promoted)."""
    windows = []
    down_at: float | None = None
    master_lost_at: float | None = None
    for event in system.timeline:
        if event.kind == "kill" and event.target.startswith("redis"):
            master_lost_at = event.at
        elif event.kind == "promoted" and master_lost_at is not None:
            windows.append((master_lost_at - AMBIGUITY_WINDOW_S, event.at + AMBIGUITY_WINDOW_S))
            master_lost_at = None
        elif event.kind == "kill" and event.target.startswith("notifier"):
            # After the kill too: a notifier killed right after writing DATA never reads the
            # 250, while the server finishes reading what the socket already held and stores
            # the message a moment later (seen in a clean-clone CI run).
            windows.append((event.at - AMBIGUITY_WINDOW_S, event.at + AFTER_KILL_S))
        elif event.target == "postgres" and event.kind == "down":
            down_at = event.at
        elif event.target == "postgres" and event.kind == "up" and down_at is not None:
            windows.append((down_at - AMBIGUITY_WINDOW_S, event.at + AMBIGUITY_WINDOW_S))
            down_at = None
    return windows


def _fault_counts(system: ChaosSystem) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for event in system.timeline:
        if event.kind in ("kill", "sigterm", "down"):
            counts[f"{event.kind} {event.target.split('.')[0]}"] += 1
    for injected in system.injected():
        if injected["fault"] != "mode":
            counts[f"smtp {injected['fault']}"] += 1
    return dict(counts)


async def judge(
    system: ChaosSystem,
    scenario: str,
    scale: Scale,
    intake: Intake,
    *,
    expect_dead: ExpectDead | None = None,
    waits: dict[str, float] | None = None,
) -> Verdict:
    """Checks every accepted order; prints the table and records the JSON line."""
    system.mail.poll()
    rows = await system.db_fetch(
        "SELECT o.id::text AS id, o.customer_email AS email, o.notification_status AS status,"
        " (SELECT count(*) FROM order_items i WHERE i.order_id = o.id) AS items,"
        " EXISTS (SELECT 1 FROM order_timeline t"
        "         WHERE t.order_id = o.id AND t.kind = 'created') AS created"
        " FROM orders o"
    )
    outbox = await system.db_fetch("SELECT count(*) AS n FROM outbox")
    ledger = await system.db_fetch(
        "SELECT order_id::text AS id, extract(epoch FROM sent_at)::float8 AS at"
        " FROM notify.sent_ledger"
    )
    recorded_at = {r["id"]: r["at"] for r in ledger}
    dead, poison, pending, receipts_pending = await _redis_state(
        system.stack.redis_url, system.shards
    )
    orders = {r["id"]: r for r in rows}
    ambiguous = Counter(f["order_id"] for f in system.injected() if f["fault"] == "accept_close")
    windows = _windows(system)
    v = Verdict(scenario, scale.name, system.notifiers, intake.sent, len(intake.accepted),
                intake.rejected, intake.failed, poison_dead=poison,
                outbox_left=int(outbox[0]["n"]), events_pending=pending,
                receipts_pending=receipts_pending,
                faults=_fault_counts(system), waits=waits or {})  # fmt: skip
    v.unknown_orders = len(orders.keys() - intake.accepted.keys())
    v.published_keys_left, v.events_length = await _redis_leftovers(
        system.stack.redis_url, system.shards
    )
    v.timeline = [
        f"{e.at - system.started_at:.2f}s {e.kind} {e.target} {e.detail}".rstrip()
        for e in system.timeline
    ]
    e2e: list[float] = []
    gaps: list[float] = []
    for order_id, created_at in intake.accepted.items():
        row = orders.get(order_id)
        copies = system.mail.copies.get(order_id, 0)
        reasons = dead.get(order_id, [])
        v.emails += copies
        v.dead += 1 if reasons else 0
        if row is None:
            v.lost += 1
            v.examples.append(f"order {order_id} was accepted but is not in the database")
            continue
        if row["items"] == 0 or not row["created"]:
            v.partial_orders += 1
        expected = expect_dead(row["email"]) if expect_dead else None
        if expected is not None:
            if copies == 0 and expected in reasons and row["status"] == "dead":
                v.dead_expected += 1
            else:
                v.wrong_outcome += 1
                v.examples.append(
                    f"order {order_id} ({row['email']}) should be dead ({expected}): "
                    f"{copies} e-mails, dead {reasons}, status {row['status']}"
                )
            continue
        if copies == 0 and reasons:
            v.dead_unexpected += 1
            v.examples.append(f"order {order_id}: no e-mail, dead {reasons}; {row['status']}")
            continue
        if copies == 0:
            v.lost += 1
            v.examples.append(f"order {order_id}: no e-mail; {row['status']}")
            continue
        v.delivered += 1
        if row["status"] != "sent":
            v.status_mismatches += 1
        first = system.mail.first_at[order_id]
        e2e.append(first - iso_ms(created_at) / 1000)
        if order_id in recorded_at:
            # The copy the ledger recorded is the last one accepted.
            gaps.append((recorded_at[order_id] - system.mail.last_at[order_id]) * 1000)
        extra = copies - 1
        if extra:
            allowed = ambiguous[order_id] + any(lo <= first <= hi for lo, hi in windows)
            v.duplicates += extra
            v.duplicates_explained += min(extra, allowed)
            if extra > allowed:
                v.examples.append(f"order {order_id}: {copies} e-mails, first at {first:.3f}")
    arrivals = sorted(system.mail.first_at[o] for o in intake.accepted if o in system.mail.first_at)
    if len(arrivals) > 1 and arrivals[-1] > arrivals[0]:
        v.emails_per_s = round((len(arrivals) - 1) / (arrivals[-1] - arrivals[0]), 1)
        v.last_email_at = arrivals[-1]
    e2e.sort()
    v.e2e_s = {
        "p50": round(nearest_rank(e2e, 0.5), 3),
        "p99": round(nearest_rank(e2e, 0.99), 3),
        "max": round(e2e[-1], 3) if e2e else math.nan,
    }
    gaps.sort()
    v.ledger_gap_ms = {
        "p50": round(nearest_rank(gaps, 0.5), 1),
        "p99": round(nearest_rank(gaps, 0.99), 1),
        "max": round(gaps[-1], 1) if gaps else math.nan,
    }
    events: Counter[str] = Counter()
    for child in system.stack.children:
        counted = log_events(child.log_path)
        events.update({k: n for k, n in counted.items() if k in NOTABLE_EVENTS})
    v.log_events = dict(sorted(events.items()))
    return v


async def conclude(
    system: ChaosSystem,
    scenario: str,
    scale: Scale,
    intake: Intake,
    *,
    expect_dead: ExpectDead | None = None,
    confirm_timeout_s: float | None = None,
    extra: dict[str, Any] | None = None,
    report: bool = True,
) -> Verdict:
    """Waits for quiescence (bounded) and judges every order; then, unless `report` is False
    (the caller adds figures first), prints the table and records the JSON line."""
    no_mail: set[str] = set()
    if expect_dead is not None:
        rows = await system.db_fetch("SELECT id::text AS id, customer_email AS email FROM orders")
        no_mail = {r["id"] for r in rows if expect_dead(r["email"]) is not None}
    # Orders already dead-lettered will get no e-mail: waiting for theirs only wastes time.
    dead, _poison, _events, _receipts = await _redis_state(system.stack.redis_url, system.shards)
    no_mail |= dead.keys()
    if confirm_timeout_s is None:
        confirm_timeout_s = scale.confirm_timeout_s
    waits = await system.quiesce(
        set(intake.accepted) - no_mail,
        mail_timeout_s=scale.mail_timeout_s,
        confirm_timeout_s=confirm_timeout_s,
    )
    verdict = await judge(system, scenario, scale, intake, expect_dead=expect_dead, waits=waits)
    verdict.extra.update(extra or {})
    if report:
        verdict.report(system.root)
    return verdict
