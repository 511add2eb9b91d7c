"""The `tracing-cost` scenario: the intake (API + relay) with tracing on, sampled and off, arms
rotated over `rounds`; CPU per order at a fixed rate and throughput at saturation."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench.figures import orders_of, post_figures
from bench.monitor import wait_until_quiet
from bench.report import base_report, medians
from bench.scenarios import (
    TRACING_ARMS,
    TRACING_SATURATION_PER_S,
    TRACING_SATURATION_S,
    RunOptions,
    Scenario,
)
from bench.stack import Stack
from bench.system import Run, measure_step, stack_run, warm_up

__all__ = ["tracing"]


def tracing(root: Path, scenario: Scenario, options: RunOptions, rounds: int) -> dict[str, Any]:
    report = base_report(scenario, options, 0)
    arms: dict[str, list[dict[str, Any]]] = {arm: [] for arm in TRACING_ARMS}
    quiet_checks = []
    names = list(TRACING_ARMS)
    for round_index in range(rounds):
        # Rotate which arm goes first, so a drift of the machine hits every arm alike.
        shift = round_index % len(names)
        for arm in names[shift:] + names[:shift]:
            options.quiet = wait_until_quiet(options.quiet_timeout_s)
            quiet_checks.append(options.quiet)
            print(f"tracing-cost: round {round_index + 1}, tracing {arm} ...", flush=True)
            result = stack_run(
                root / f"{round_index}-{arm}",
                0,
                options,
                sink=False,
                env=TRACING_ARMS[arm],
                body=lambda stack: intake_arm(stack, scenario, options),
            )
            result["quiet"] = options.quiet
            arms[arm].append(result)
            h = result["headline"]
            print(
                f"  API {h['api_cpu_ms_per_order']:.3f} CPU-ms/order, POST p99 "
                f"{h['post_p99_ms']:.1f} ms; saturation {h['saturation_per_s']:.0f}/s",
                flush=True,
            )
    medians = {arm: medians([r["headline"] for r in runs]) for arm, runs in arms.items()}
    off = medians["off"]

    def ratio(arm: str, key: str) -> float:
        base = off[key]["median"]
        return round(medians[arm][key]["median"] / base - 1, 4) if base else 0.0

    report["quiet_checks"] = quiet_checks
    report["provisional"] = next((q["label"] for q in quiet_checks if q["label"]), None)
    report["arms"] = arms
    report["medians"] = medians
    report["tracing_overhead"] = {
        arm: {
            "api_cpu_per_order": ratio(arm, "api_cpu_ms_per_order"),
            "total_cpu_per_order": ratio(arm, "total_cpu_ms_per_order"),
            "saturation_throughput": ratio(arm, "saturation_per_s"),
        }
        for arm in names
        if arm != "off"
    }
    report["headline"] = {
        f"{key}_{arm}": medians[arm][key]["median"] for arm in arms for key in medians[arm]
    }
    report["targets"] = []
    return report


async def intake_arm(stack: Stack, scenario: Scenario, options: RunOptions) -> dict[str, Any]:
    """One tracing-cost arm: CPU per order at the scenario's rate, then throughput when
    offered TRACING_SATURATION_PER_S."""
    run = await Run.open(stack, sink=False, rss_every_s=10.0)
    try:
        await warm_up(run, scenario, options)
        fixed = await measure_step(run, scenario.rate_per_s, scenario.duration_s, 0, options)
        await asyncio.sleep(1.0)
        saturated = await measure_step(
            run, TRACING_SATURATION_PER_S, TRACING_SATURATION_S, 1, options
        )
    finally:
        await run.close()
    post = post_figures(orders_of(fixed.loads), fixed.loads)
    sat = post_figures(orders_of(saturated.loads), saturated.loads)
    cpu = fixed.cpu()
    sat_cpu = saturated.cpu()
    return {
        "post": post,
        "cpu": cpu,
        "user_system": fixed.user_system,
        "saturation": {"offered_per_s": TRACING_SATURATION_PER_S, **sat, "cpu": sat_cpu},
        "headline": {
            "api_cpu_ms_per_order": cpu["by_process"]["api"]["cpu_ms_per_order"],
            "total_cpu_ms_per_order": cpu["tracked_ms_per_order"],
            "post_p50_ms": post["latency_ms"]["p50"],
            "post_p99_ms": post["latency_ms"]["p99"],
            "saturation_per_s": sat["achieved_per_s"],
            "saturation_api_cpu_ms_per_order": sat_cpu["by_process"]["api"]["cpu_ms_per_order"],
        },
    }
