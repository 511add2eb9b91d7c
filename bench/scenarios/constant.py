"""Constant-rate scenarios (smoke, steady-50, peak-200, sustain-500, soak): a warm-up, then a
fixed rate for a fixed time, every e-mail awaited; latency, CPU, RSS, stream and database."""

from __future__ import annotations

import asyncio
import math
import os
import time
from typing import Any

from bench.cpu import cpu_table, postgres_split, process_cpu_s, user_system_s, user_system_split
from bench.e2e import database_state, redis_state
from bench.figures import (
    e2e_figures,
    orders_of,
    peak_sample,
    post_figures,
    rss_figures,
    sample_rows,
    series,
)
from bench.probes import gc_pauses_of, postgres_backends, postgres_tables
from bench.report import RSS_LIMITS_MB, base_report, cpu_headline, memory_targets, target_row
from bench.scenarios import RunOptions, Scenario
from bench.stack import Stack
from bench.system import Run, offer, warm_up

__all__ = ["constant"]


async def constant(
    stack: Stack, scenario: Scenario, options: RunOptions, notifiers: int
) -> dict[str, Any]:
    report = base_report(scenario, options, notifiers)
    run = await Run.open(stack, sink=True, rss_every_s=scenario.rss_every_s)
    try:
        print(f"ready in {run.ready_s:.1f} s; warming up {scenario.warmup_s:g} s ...", flush=True)
        warm = await warm_up(run, scenario, options)
        print(f"offering {scenario.rate_per_s:g}/s for {scenario.duration_s:g} s ...", flush=True)
        pg_labels = await postgres_backends(stack.database_url)
        pg_before = process_cpu_s(pg_labels)
        before = run.snapshot()
        split_before = user_system_s(run.monitor.roots)
        start_unix = time.time()
        loads = await offer(
            stack.http_port,
            scenario.rate_per_s,
            scenario.duration_s,
            f"measure-{os.getpid()}",
            2,
            connections=options.connections,
            api_key=stack.api_key,
        )
        posted = run.snapshot()
        orders = orders_of(loads)
        wanted = {o.order_id for o in orders if o.order_id and 200 <= o.status < 300}
        assert run.mail is not None
        print(
            f"waiting up to {scenario.mail_drain_s:g} s for {len(wanted)} e-mails ...", flush=True
        )
        await run.mail.wait_for(wanted, scenario.mail_drain_s, stack)
        after = run.snapshot()
        split = user_system_split(split_before, user_system_s(run.monitor.roots))
        pg_after = process_cpu_s(pg_labels)
        end_unix = time.time()
        await asyncio.sleep(2.0)  # late duplicates; one more monitor sample
        run.mail.poll()
        report["redis"] = await redis_state(run.redis, stack.stream_shards())
        report["api_gc"] = await gc_pauses_of(stack.metrics_port("api"))
    finally:
        await run.close()
    report["database"] = await database_state(stack.database_url)
    report["postgres_tables"] = await postgres_tables(stack.database_url)
    post = post_figures(orders, loads)
    e2e = e2e_figures(orders, run.mail)
    cpu = cpu_table(before, after, post["accepted"])
    rss = rss_figures(run.monitor.samples, start_unix, end_unix)
    samples = run.monitor.samples
    report.update(
        window={"start_unix": start_unix, "end_unix": end_unix},
        post=post,
        e2e=e2e,
        cpu=cpu,
        cpu_during_posts=cpu_table(before, posted, post["accepted"]),
        user_system=split,
        postgres_by_client=postgres_split(
            pg_labels,
            pg_before,
            pg_after,
            cpu["by_process"].get("postgres", {}).get("cpu_s", 0.0),
            post["accepted"],
        ),
        rss=rss,
        stream={
            "peak_lag": peak_sample(samples, "lag"),
            "peak_pending": peak_sample(samples, "pending"),
            "peak_oldest_unread_age_s": peak_sample(samples, "oldest_unread_age_s"),
        },
        series=series(run.t0_unix, orders_of(warm) + orders, run.mail),
        samples=sample_rows(run.t0_unix, samples),
    )
    report["headline"] = {
        "achieved_per_s": post["achieved_per_s"],
        "post_p50_ms": post["latency_ms"]["p50"],
        "post_p99_ms": post["latency_ms"]["p99"],
        "e2e_p50_ms": e2e["e2e_ms"]["p50"],
        "e2e_p99_ms": e2e["e2e_ms"]["p99"],
        "e2e_max_ms": e2e["e2e_ms"]["max"],
        "missing": e2e["missing"],
        "duplicates": e2e["duplicates"],
        "not_2xx": post["not_2xx"],
        **cpu_headline(cpu),
        **{f"rss_max_mb_{name}": info["max_mb"] for name, info in rss.items()},
        **{f"rss_slope_mb_per_min_{name}": info["slope_mb_per_min"] for name, info in rss.items()},
    }
    report["targets"] = _constant_targets(scenario, post, e2e, rss)
    return report


def _constant_targets(
    scenario: Scenario, post: dict[str, Any], e2e: dict[str, Any], rss: dict[str, Any]
) -> list[dict[str, Any]]:
    delivered = e2e["missing"] == 0 and post["not_2xx"] == 0
    targets = [
        target_row(
            "every order accepted and its e-mail delivered once",
            f"missing {e2e['missing']}, duplicates {e2e['duplicates']}, not 2xx {post['not_2xx']}",
            delivered and e2e["duplicates"] == 0,
        )
    ]
    p99, e50, e99 = post["latency_ms"]["p99"], e2e["e2e_ms"]["p50"], e2e["e2e_ms"]["p99"]
    if scenario.name == "peak-200":
        targets += [
            target_row("POST p99 < 10 ms at 200/s, notifiers running", f"{p99:.1f} ms", p99 < 10),
            target_row("e2e p50 < 50 ms at 200/s", f"{e50:.0f} ms", e50 < 50),
            target_row("e2e p99 < 500 ms at 200/s", f"{e99:.0f} ms", e99 < 500),
        ]
    if scenario.name == "sustain-500":
        keeps_up = e2e["last_email_after_last_post_s"] < 10
        targets.append(
            target_row(
                f"{scenario.rate_per_s:g}/s sustained for {scenario.duration_s:g} s, every e-mail",
                f"{post['achieved_per_s']:.0f}/s accepted, {e2e['emails_per_s_first_to_last']:.0f} "
                f"e-mails/s, last e-mail {e2e['last_email_after_last_post_s']:.1f} s after the "
                f"last POST",
                delivered and keeps_up,
            )
        )
    if scenario.name in ("soak", "peak-200", "sustain-500"):
        targets += memory_targets(rss)
    if scenario.name == "soak":
        for name, info in sorted(rss.items()):
            if name.startswith(tuple(RSS_LIMITS_MB)):
                slope = info["slope_second_half_mb_per_min"]
                targets.append(
                    target_row(
                        f"{name}: no RSS growth over the soak",
                        f"{slope:+.2f} MB/min (second half)",
                        abs(slope) < 1.0 if not math.isnan(slope) else None,
                    )
                )
    return targets
