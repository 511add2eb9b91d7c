"""The benchmark suite's named scenarios (`bench/run.py <name>`) and the options of a run.

Each scenario kind has its module beside this one: constant.py (smoke, steady-50, peak-200,
cpu-200, sustain-500, soak), ramp.py (max), outage.py (outage-recovery), tracing.py
(tracing-cost), profile.py (profile-api[-200], intake-1500) and storage.py (storage, storage-soak).
This module only says what each named scenario is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bench.loadgen import DEFAULT_CONNECTIONS
from bench.monitor import MAX_RUN_S
from bench.stack import RESULTS_DIR

__all__ = [
    "E2E_STEPS",
    "INTAKE_STEPS",
    "OUTAGE_AFTER_FACTOR",
    "OUTAGE_BEFORE_S",
    "OUTAGE_S",
    "SCENARIOS",
    "SOAK_ENV",
    "STORAGE_SOAK_ENV",
    "TRACING_ARMS",
    "TRACING_SATURATION_PER_S",
    "TRACING_SATURATION_S",
    "RunOptions",
    "Scenario",
]

SOAK_ENV: Final = "ACME_BENCH_SOAK_S"
DEFAULT_SOAK_S: Final = 600.0
STORAGE_SOAK_ENV: Final = "ACME_BENCH_STORAGE_SOAK_S"
DEFAULT_STORAGE_SOAK_S: Final = 900.0


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # constant, max, outage, tracing, profile, intake, storage
    rate_per_s: float = 200.0
    duration_s: float = 60.0
    notifiers: int = 2
    warmup_s: float = 5.0
    rss_every_s: float = 1.0
    mail_drain_s: float = 120.0
    description: str = ""


def _soak_s(variable: str = SOAK_ENV, default: float = DEFAULT_SOAK_S) -> float:
    try:
        value = float(os.environ.get(variable, default))
    except ValueError:
        return default
    return min(max(value, 30.0), MAX_RUN_S)


def _scenarios() -> dict[str, Scenario]:
    return {
        s.name: s
        for s in (
            Scenario(
                "smoke",
                "constant",
                50.0,
                3.0,
                notifiers=1,
                warmup_s=1.0,
                mail_drain_s=60.0,
                description="CI smoke test",
            ),
            Scenario("steady-50", "constant", 50.0, 60.0, description="the mean rate"),
            Scenario("peak-200", "constant", 200.0, 60.0, description="the peak rate"),
            Scenario(
                "sustain-500",
                "constant",
                500.0,
                300.0,
                mail_drain_s=600.0,
                description="the end-to-end throughput target",
            ),
            Scenario("max", "max", description="ramp until latency, errors or e-mails break"),
            Scenario("outage-recovery", "outage", 200.0, description="3-minute SMTP outage"),
            Scenario(
                "soak",
                "constant",
                200.0,
                _soak_s(),
                rss_every_s=10.0,
                description=f"memory soak ({SOAK_ENV} s)",
            ),
            Scenario(
                "storage",
                "storage",
                200.0,
                30.0,
                warmup_s=0.0,
                description="what Redis and PostgreSQL keep: 6,000 orders, then 30 s quiet",
            ),
            Scenario(
                "storage-smoke",
                "storage",
                50.0,
                3.0,
                notifiers=1,
                warmup_s=0.0,
                mail_drain_s=60.0,
                description="CI test of the storage scenario",
            ),
            Scenario(
                "storage-soak",
                "storage",
                200.0,
                _soak_s(STORAGE_SOAK_ENV, DEFAULT_STORAGE_SOAK_S),
                warmup_s=0.0,
                rss_every_s=10.0,
                description=f"storage flat across retentions of minutes ({STORAGE_SOAK_ENV} s)",
            ),
            Scenario("tracing-cost", "tracing", 200.0, 20.0, notifiers=0, warmup_s=3.0),
            Scenario("profile-api", "profile", 1_000.0, 30.0, notifiers=0, warmup_s=3.0),
            Scenario(
                "profile-api-200",
                "profile",
                200.0,
                30.0,
                notifiers=0,
                warmup_s=3.0,
                description="py-spy on the API at the brief's peak: where a quiet order goes",
            ),
            Scenario(
                "intake-1500",
                "intake",
                1_500.0,
                20.0,
                notifiers=0,
                warmup_s=3.0,
                description="one API process offered 1,500 orders/s (no notifiers)",
            ),
            Scenario(
                "cpu-idle",
                "constant",
                1.0,
                60.0,
                warmup_s=0.0,
                description="fixed cost of a quiet system: 1 order/s for 60 s (per order = per s)",
            ),
            Scenario(
                "cpu-200",
                "constant",
                200.0,
                30.0,
                description="whole-system CPU per order: 6,000 orders at 200/s, every e-mail",
            ),
        )
    }


SCENARIOS: Final = _scenarios()

# The ramps of the `max` scenario (orders/s per step).
INTAKE_STEPS: Final = (200.0, 400.0, 600.0, 800.0, 1000.0, 1200.0, 1500.0, 1800.0, 2000.0)
E2E_STEPS: Final = (100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 800.0, 1000.0, 1200.0)
# outage-recovery: normal traffic before, the outage, traffic after (then the drain wait).
OUTAGE_BEFORE_S: Final = 30.0
OUTAGE_S: Final = 180.0
#: Traffic goes on for this many times the outage after it (at least 60 s): 270 s for 180 s.
OUTAGE_AFTER_FACTOR: Final = 1.5
# tracing-cost: CPU per order at its rate, then the throughput when offered this much.
#: The arms: each one's environment on top of the stack's.
TRACING_ARMS: Final = {
    "on": {"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_SAMPLER": "parentbased_always_on"},
    "sampled": {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    },
    "off": {"OTEL_SDK_DISABLED": "true"},
}
TRACING_SATURATION_PER_S: Final = 1_500.0
TRACING_SATURATION_S: Final = 10.0


@dataclass
class RunOptions:
    out_dir: Path = RESULTS_DIR
    notifiers: int | None = None
    plot: bool = True
    quiet_timeout_s: float = 600.0
    step_s: float = 15.0
    outage_s: float = OUTAGE_S
    outage_mode: str = "refuse"
    profile_s: float = 20.0
    native: bool = False
    connections: int = DEFAULT_CONNECTIONS
    keep_data: bool = False
    #: Filled per run: the result of the quiet check, the command line.
    command: str = ""
    quiet: dict[str, Any] = field(default_factory=dict)
