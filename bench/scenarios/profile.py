"""The intake alone (no notifiers), at or past saturation: `intake-1500` (the figure of issue 16:
1,500 orders/s offered to one API process) and `profile-api` (the same with py-spy recording
the API)."""

from __future__ import annotations

import asyncio
from typing import Any

from bench.figures import orders_of, post_figures
from bench.profiling import hot_spots, markdown_table, start_profile, stop_profile
from bench.report import base_report, cpu_headline, target_row
from bench.scenarios import RunOptions, Scenario
from bench.stack import Stack
from bench.system import Run, child_named, measure_step, warm_up

__all__ = ["intake", "profile_api"]


async def profile_api(stack: Stack, scenario: Scenario, options: RunOptions) -> dict[str, Any]:
    report = base_report(scenario, options, 0)
    run = await Run.open(stack, sink=False, rss_every_s=10.0)
    folded = stack.root / "api.folded"
    try:
        await warm_up(run, scenario, options)
        api_pid = child_named(stack, "api").process.pid

        async def record() -> dict[str, Any]:
            await asyncio.sleep(3.0)
            profiler = start_profile(api_pid, options.profile_s, folded, native=options.native)
            if profiler is None:
                return {"error": "py-spy not installed"}
            await asyncio.to_thread(stop_profile, profiler, options.profile_s + 30)
            return hot_spots(folded)

        step, spots = await asyncio.gather(
            measure_step(run, scenario.rate_per_s, scenario.duration_s, 0, options), record()
        )
    finally:
        await run.close()
    post = post_figures(orders_of(step.loads), step.loads)
    report.update(post=post, cpu=step.cpu(), user_system=step.user_system, profile=spots)
    report["profile"]["raw_stacks"] = str(folded)
    if "error" not in spots:
        report["profile"]["markdown"] = markdown_table(spots)
    report["headline"] = {"achieved_per_s": post["achieved_per_s"]}
    report["targets"] = []
    return report


async def intake(stack: Stack, scenario: Scenario, options: RunOptions) -> dict[str, Any]:
    """POST latency, acceptance and CPU per order of the intake at `scenario.rate_per_s`."""
    report = base_report(scenario, options, 0)
    run = await Run.open(stack, sink=False, rss_every_s=10.0)
    try:
        await warm_up(run, scenario, options)
        step = await measure_step(run, scenario.rate_per_s, scenario.duration_s, 0, options)
    finally:
        await run.close()
    post = post_figures(orders_of(step.loads), step.loads)
    cpu = step.cpu()
    report.update(post=post, cpu=cpu, user_system=step.user_system)
    p99 = post["latency_ms"]["p99"]
    api_ms = cpu["by_process"]["api"]["cpu_ms_per_order"]
    report["headline"] = {
        "achieved_per_s": post["achieved_per_s"],
        "post_p50_ms": post["latency_ms"]["p50"],
        "post_p99_ms": p99,
        "not_2xx": post["not_2xx"],
        **cpu_headline(cpu),
    }
    rate = scenario.rate_per_s
    report["targets"] = [
        target_row(
            f"intake {rate:g}/s from one API process, POST p99 < 50 ms",
            f"{post['achieved_per_s']:.0f}/s accepted, p99 {p99:.1f} ms",
            post["achieved_per_s"] >= rate * 0.98 and p99 < 50 and post["not_2xx"] == 0,
        ),
        target_row("API <= 0.6 CPU-ms per order at saturation", f"{api_ms:.3f}", api_ms <= 0.6),
    ]
    return report
