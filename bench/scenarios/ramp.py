"""The `max` scenario: ramps in steps until POST p99 > 50 ms, errors, or (end to end) e-mails
fall behind; first intake alone (API + relay), then the whole system."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.figures import Order, e2e_figures, orders_of, post_figures, sample_rows, series
from bench.report import base_report, target_row
from bench.scenarios import E2E_STEPS, INTAKE_STEPS, RunOptions, Scenario
from bench.stack import Stack
from bench.system import Run, measure_step, offer, stack_run

__all__ = ["max_scenario"]


def max_scenario(
    root: Path, scenario: Scenario, options: RunOptions, notifiers: int
) -> dict[str, Any]:
    report = base_report(scenario, options, notifiers)
    phases: dict[str, Any] = {}
    for phase, steps, with_notifiers in (
        ("intake", INTAKE_STEPS, 0),
        ("e2e", E2E_STEPS, notifiers),
    ):
        print(f"max: phase {phase} ({with_notifiers} notifiers) ...", flush=True)
        phases[phase] = stack_run(
            root / phase,
            with_notifiers,
            options,
            sink=phase == "e2e",
            env=None,
            body=lambda stack, steps=steps, e2e=phase == "e2e": ramp(  # type: ignore[misc]
                stack, steps, options, e2e=e2e
            ),
        )
    report["phases"] = phases
    intake, e2e = phases["intake"], phases["e2e"]
    good_intake = [s for s in intake["steps"] if s["ok"]]
    saturation_p99 = good_intake[-1]["post_p99_ms"] if good_intake else math.nan
    report["headline"] = {
        "intake_last_good_per_s": intake["last_good_rate_per_s"],
        "intake_max_achieved_per_s": intake["max_achieved_per_s"],
        "intake_p99_at_last_good_ms": saturation_p99,
        "e2e_last_good_per_s": e2e["last_good_rate_per_s"],
        "e2e_max_achieved_per_s": e2e["max_achieved_per_s"],
    }
    report["targets"] = [
        target_row(
            "intake >= 1,500 orders/s from one API process (POST p99 <= 50 ms)",
            f"last good step {intake['last_good_rate_per_s']:g}/s; at most "
            f"{intake['max_achieved_per_s']:.0f}/s accepted when overloaded",
            intake["last_good_rate_per_s"] >= 1500,
        ),
        target_row(
            "end to end >= 500 orders/s (15 s steps here; 5 minutes: sustain-500)",
            f"last good step {e2e['last_good_rate_per_s']:g}/s",
            e2e["last_good_rate_per_s"] >= 500,
        ),
    ]
    return report


async def ramp(
    stack: Stack, steps: Sequence[float], options: RunOptions, *, e2e: bool
) -> dict[str, Any]:
    """Steps up the rate until a step breaks; one row per step."""
    run = await Run.open(stack, sink=e2e, rss_every_s=1.0)
    rows: list[dict[str, Any]] = []
    all_orders: list[Order] = []
    try:
        await offer(
            stack.http_port,
            steps[0],
            3.0,
            f"warmup-{os.getpid()}",
            1,
            connections=options.connections,
            api_key=stack.api_key,
        )
        # The ramp, then at most one more step halfway between the last good and the first
        # broken rate (rounded to 50/s), to narrow the answer down.
        planned = list(steps)
        refined = False
        for index in range(len(steps) + 1):
            if index >= len(planned):
                break
            rate = planned[index]
            print(f"  step {index + 1}: {rate:g}/s for {options.step_s:g} s ...", flush=True)
            start_unix = time.time()
            step = await measure_step(run, rate, options.step_s, index, options)
            loads = step.loads
            orders = orders_of(loads)
            all_orders += orders
            post = post_figures(orders, loads)
            row: dict[str, Any] = {
                "rate_per_s": rate,
                "start_s": round(start_unix - run.t0_unix, 2),
                "achieved_per_s": post["achieved_per_s"],
                "post_p50_ms": post["latency_ms"]["p50"],
                "post_p99_ms": post["latency_ms"]["p99"],
                "not_2xx": post["not_2xx"],
                "generator_dispatch_lag_p99_ms": post["dispatch_lag_p99_ms"],
                "cpu": step.cpu(),
                "user_system": step.user_system,
            }
            reasons = []
            if post["latency_ms"]["p99"] > 50:
                reasons.append(f"POST p99 {post['latency_ms']['p99']:.0f} ms > 50 ms")
            if post["not_2xx"]:
                reasons.append(f"{post['not_2xx']} requests not 2xx")
            if e2e and run.mail is not None:
                reasons += await _email_step(run, orders, rate, row)
            row["ok"] = not reasons
            row["broke_because"] = reasons
            rows.append(row)
            print(
                f"    achieved {row['achieved_per_s']:.0f}/s, POST p99 "
                f"{row['post_p99_ms']:.1f} ms"
                + (f", e2e p99 {row['e2e_p99_ms']:.0f} ms" if e2e else "")
                + ("" if row["ok"] else f"; BROKE: {'; '.join(reasons)}"),
                flush=True,
            )
            await asyncio.sleep(2.0)
            if reasons:
                good = [r["rate_per_s"] for r in rows if r["ok"]]
                middle = round((good[-1] + rate) / 2 / 50) * 50 if good else 0.0
                if refined or not good or not good[-1] < middle < rate:
                    break
                # Let the broken step's queues empty before the refining step starts.
                await asyncio.sleep(5.0)
                planned[index + 1 :] = [middle]
                refined = True
            elif refined:
                break
        samples = run.monitor.samples
    finally:
        await run.close()
    good = [r for r in rows if r["ok"]]
    return {
        "steps": rows,
        "last_good_rate_per_s": max((r["rate_per_s"] for r in good), default=0.0),
        "max_achieved_per_s": max((r["achieved_per_s"] for r in rows), default=0.0),
        "series": series(run.t0_unix, all_orders, run.mail),
        "samples": sample_rows(run.t0_unix, samples),
    }


async def _email_step(run: Run, orders: list[Order], rate: float, row: dict[str, Any]) -> list[str]:
    """Did the step's e-mails keep up? Backlog at the step's end <= 1 s of traffic, and every
    e-mail of the step within 10 s of its end."""
    assert run.mail is not None
    run.mail.poll()
    wanted = {o.order_id for o in orders if o.order_id and 200 <= o.status < 300}
    backlog_at_end = len(wanted - run.mail.first_at.keys())
    waited = await run.mail.wait_for(wanted, 30.0, run.stack)
    e2e = e2e_figures(orders, run.mail)
    row.update(
        emails_backlog_at_step_end=backlog_at_end,
        emails_all_in_s=round(waited, 1),
        e2e_p50_ms=e2e["e2e_ms"]["p50"],
        e2e_p99_ms=e2e["e2e_ms"]["p99"],
        missing=e2e["missing"],
        emails_per_s=e2e["emails_per_s_first_to_last"],
    )
    reasons = []
    if backlog_at_end > rate * 1.0:
        reasons.append(f"{backlog_at_end} e-mails behind at the step's end (> 1 s of traffic)")
    if e2e["missing"] or waited > 10.0:
        reasons.append(f"the step's e-mails took {waited:.0f} s after its end")
    return reasons
