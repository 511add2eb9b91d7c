"""The `outage-recovery` scenario: steady load while the SMTP sink refuses for a while, then
how long the oldest e-mail took, how fast the backlog drained, what the breaker did."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import time
from typing import Any, Final

from bench.cpu import cpu_table
from bench.e2e import child_logs, database_state, redis_state
from bench.figures import (
    Order,
    e2e_figures,
    orders_of,
    peak_sample,
    post_figures,
    rss_figures,
    sample_rows,
    series,
)
from bench.probes import postgres_tables
from bench.report import base_report, target_row
from bench.scenarios import OUTAGE_AFTER_FACTOR, OUTAGE_BEFORE_S, RunOptions, Scenario
from bench.stack import MailLog, Stack
from bench.system import Run, child_named, offer, warm_up

__all__ = ["outage"]

#: The SLA: an e-mail accepted by the SMTP server within this long of its order.
_SLA_S: Final = 300.0


async def outage(
    stack: Stack, scenario: Scenario, options: RunOptions, notifiers: int
) -> dict[str, Any]:
    report = base_report(scenario, options, notifiers)
    rate, outage_s = scenario.rate_per_s, options.outage_s
    load_s = OUTAGE_BEFORE_S + outage_s + max(60.0, OUTAGE_AFTER_FACTOR * outage_s)
    run = await Run.open(stack, sink=True, rss_every_s=scenario.rss_every_s)
    marks: dict[str, float] = {}
    try:
        warm = await warm_up(run, scenario, options)
        before = run.snapshot()
        start_unix = time.time()
        print(f"offering {rate:g}/s for {load_s:g} s ...", flush=True)
        loads, _ = await asyncio.gather(
            offer(
                stack.http_port,
                rate,
                load_s,
                f"measure-{os.getpid()}",
                2,
                connections=options.connections,
                api_key=stack.api_key,
            ),
            _outage_window(run, OUTAGE_BEFORE_S, outage_s, marks),
        )
        orders = orders_of(loads)
        assert run.mail is not None
        wanted = {o.order_id for o in orders if o.order_id and 200 <= o.status < 300}
        print(
            f"waiting up to {_SLA_S * 2:g} s for the rest of {len(wanted)} e-mails ...", flush=True
        )
        await run.mail.wait_for(wanted, _SLA_S * 2, stack)
        after = run.snapshot()
        end_unix = time.time()
        await asyncio.sleep(2.0)
        run.mail.poll()
        report["redis"] = await redis_state(run.redis, stack.stream_shards())
    finally:
        await run.close()
    report["database"] = await database_state(stack.database_url)
    report["postgres_tables"] = await postgres_tables(stack.database_url)
    report["logs"] = child_logs(stack)
    post = post_figures(orders, loads)
    e2e = e2e_figures(orders, run.mail)
    recovery = _recovery(orders, run.mail, marks, rate)
    recovery["breaker"] = _breaker(report["logs"], report["redis"], report["database"])
    samples = run.monitor.samples
    recovery["peak_lag"] = peak_sample(samples, "lag")
    recovery["peak_pending"] = peak_sample(samples, "pending")
    recovery["peak_oldest_unread_age_s"] = peak_sample(samples, "oldest_unread_age_s")
    report.update(
        window={"start_unix": start_unix, "end_unix": end_unix, **marks},
        post=post,
        e2e=e2e,
        recovery=recovery,
        cpu=cpu_table(before, after, post["accepted"]),
        rss=rss_figures(samples, start_unix, end_unix),
        series=series(run.t0_unix, orders_of(warm) + orders, run.mail),
        samples=sample_rows(run.t0_unix, samples),
    )
    oldest = recovery["oldest_email_e2e_s"]
    report["headline"] = {
        "oldest_email_e2e_s": oldest,
        "first_outage_order_e2e_s": recovery["first_outage_order_e2e_s"],
        "drain_s": recovery["drain_s"],
        "first_email_after_recovery_s": recovery["first_email_after_recovery_s"],
        "backlog_peak": recovery["backlog_peak"],
        "missing": e2e["missing"],
        "duplicates": e2e["duplicates"],
        "dead_letters": recovery["breaker"]["dead_letters"],
        "transient_failures": recovery["breaker"]["send_failed_transient"],
        "drain_emails_per_s": recovery["drain_emails_per_s"],
    }
    report["targets"] = [
        target_row(
            f"after a {outage_s:g} s SMTP outage at {rate:g}/s the oldest e-mail is "
            f"accepted within {_SLA_S:g} s",
            f"{oldest:.0f} s",
            oldest < _SLA_S,
        ),
        target_row(
            "the backlog drains, every e-mail delivered once",
            f"drained {recovery['drain_s']:.0f} s after SMTP came back; missing "
            f"{e2e['missing']}, duplicates {e2e['duplicates']}",
            e2e["missing"] == 0 and not math.isnan(recovery["drain_s"]),
        ),
        target_row(
            "the circuit breaker holds during the outage (no e-mail dead-lettered, few attempts)",
            f"{recovery['breaker']['send_failed_transient']} failed attempts, "
            f"{recovery['breaker']['dead_letters']} dead letters",
            recovery["breaker"]["dead_letters"] == 0,
        ),
    ]
    return report


async def _outage_window(
    run: Run, before_s: float, outage_s: float, marks: dict[str, float]
) -> None:
    sink = child_named(run.stack, "sink")
    await asyncio.sleep(before_s)
    sink.process.send_signal(signal.SIGUSR1)
    marks["down_unix"] = time.time()
    print(f"  SMTP sink down for {outage_s:g} s ...", flush=True)
    await asyncio.sleep(outage_s)
    sink.process.send_signal(signal.SIGUSR2)
    marks["up_unix"] = time.time()
    print("  SMTP sink back", flush=True)


def _recovery(
    orders: list[Order], mail: MailLog, marks: dict[str, float], rate: float
) -> dict[str, Any]:
    down, up = marks.get("down_unix", math.nan), marks.get("up_unix", math.nan)
    ok = [o for o in orders if o.order_id and o.created_unix is not None]
    e2e = [
        (at - o.created_unix, o)
        for o in ok
        if o.created_unix is not None and (at := mail.first_at.get(o.order_id or "")) is not None
    ]
    oldest_s, oldest = max(e2e, key=lambda pair: pair[0], default=(math.nan, None))
    during = [o for o in ok if o.created_unix is not None and o.created_unix >= down]
    first_outage = min(during, key=lambda o: o.created_unix or 0.0, default=None)
    first_outage_e2e = (
        mail.first_at[first_outage.order_id] - (first_outage.created_unix or 0.0)
        if first_outage is not None and first_outage.order_id in mail.first_at
        else math.nan
    )
    # Backlog(s) = orders created by s - their e-mails received by s, second by second.
    created = sorted(o.created_unix for o in ok if o.created_unix is not None)
    received = sorted(mail.first_at[o.order_id] for o in ok if o.order_id in mail.first_at)
    backlog_peak, drain_s = 0, math.nan
    start = math.floor(created[0]) if created else 0
    end = math.ceil(max(received[-1] if received else 0.0, created[-1] if created else 0.0))
    i = j = 0
    for second in range(start, end + 2):
        while i < len(created) and created[i] <= second:
            i += 1
        while j < len(received) and received[j] <= second:
            j += 1
        backlog = i - j
        backlog_peak = max(backlog_peak, backlog)
        if second > up and math.isnan(drain_s) and backlog <= rate * 1.0:
            drain_s = second - up
    after_up = [at for at in received if at >= up]
    drained_at = up + drain_s if not math.isnan(drain_s) else math.nan
    in_drain = [at for at in after_up if at <= drained_at]
    return {
        "down_unix": down,
        "up_unix": up,
        "outage_s": round(up - down, 1),
        "oldest_email_e2e_s": round(oldest_s, 1),
        "oldest_email_order_created_after_down_s": (
            round((oldest.created_unix or 0.0) - down, 1) if oldest is not None else math.nan
        ),
        "first_outage_order_e2e_s": round(first_outage_e2e, 1),
        "first_email_after_recovery_s": round(after_up[0] - up, 2) if after_up else math.nan,
        "drain_s": drain_s,
        "drain_emails_per_s": round(len(in_drain) / drain_s, 1) if drain_s and in_drain else 0.0,
        "backlog_peak": backlog_peak,
    }


def _breaker(
    logs: dict[str, Any], redis_now: dict[str, Any], database: dict[str, Any]
) -> dict[str, Any]:
    def total(event: str) -> int:
        return sum(
            info["events"].get(event, 0)
            for name, info in logs.items()
            if name.startswith("notifier-")
        )

    return {
        "smtp_circuit_opened": total("smtp_circuit_opened"),
        "smtp_circuit_opened_by_peer": total("smtp_circuit_opened_by_peer"),
        "send_failed_transient": total("send_failed_transient"),
        "entry_handling_failed": total("entry_handling_failed"),
        "dead_letters": int(redis_now.get("dead_length", 0)),
        "ledger_sent_after_retry": database.get("ledger_sent_after_retry"),
    }
