"""The notifier's autoscaling, simulated on the manifests' own numbers, keeps the promise.

bench/hpa_sim.py models the HPA controller (15 s sync, 10 % tolerance, stabilisation windows,
scaling policies) and a FIFO stream drained by `per_replica_per_s` e-mails/s per ready pod. Here
it runs on the HPA and the ScaledObject exactly as the prod overlays render them.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pytest
from bench.hpa_sim import (
    ADAPTER,
    FIXED,
    KEDA,
    SLA_S,
    AutoscalerSpec,
    SimConfig,
    SimResult,
    day_scenario,
    outage_scenario,
    plot,
    simulate,
    spec_from_hpa,
    spec_from_scaled_object,
)

from tests.deploy.manifests import Obj, named, of_kind

SCENARIOS = {"day": day_scenario(), "outage": outage_scenario()}


@pytest.fixture(scope="module")
def specs(rendered: dict[str, list[Obj]]) -> dict[str, AutoscalerSpec]:
    """The simulation's view of the notifier's HPA (prod) and ScaledObject (prod-keda)."""
    (scaled,) = of_kind(rendered["prod-keda"], "ScaledObject")
    return {
        "adapter": spec_from_hpa(
            named(rendered["prod"], "HorizontalPodAutoscaler", "acme-notifier")
        ),
        "keda": spec_from_scaled_object(scaled),
    }


@pytest.fixture(scope="module")
def runs(specs: dict[str, AutoscalerSpec]) -> dict[tuple[str, str], SimResult]:
    return {
        (autoscaler, scenario): simulate(spec, SCENARIOS[scenario])
        for autoscaler, spec in specs.items()
        for scenario in SCENARIOS
    }


def test_simulation_defaults_mirror_the_manifests(specs: dict[str, AutoscalerSpec]) -> None:
    """bench/hpa_sim.py's ADAPTER and KEDA are the rendered HPA and ScaledObject, field by field."""
    assert replace(specs["adapter"], name=ADAPTER.name) == ADAPTER
    assert replace(specs["keda"], name=KEDA.name) == KEDA


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("autoscaler", ["adapter", "keda"])
def test_no_email_waits_past_the_sla(
    runs: dict[tuple[str, str], SimResult], autoscaler: str, scenario: str
) -> None:
    """The day shape and the 3-minute SMTP outage both keep every e-mail under 300 s."""
    result = runs[(autoscaler, scenario)]
    assert result.worst_age_s < SLA_S
    assert result.within_sla


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
@pytest.mark.parametrize("autoscaler", ["adapter", "keda"])
def test_replicas_stay_within_the_autoscaler_bounds(
    runs: dict[tuple[str, str], SimResult], autoscaler: str, scenario: str
) -> None:
    """Desired and sending replicas never drop below minReplicas nor exceed maxReplicas."""
    result = runs[(autoscaler, scenario)]
    spec = result.spec
    assert min(result.desired) >= spec.min_replicas
    assert min(result.ready) >= spec.min_replicas
    assert max(result.desired) <= spec.max_replicas


@pytest.mark.parametrize("autoscaler", ["adapter", "keda"])
def test_outage_backlog_is_gone_before_the_first_email_is_due(
    runs: dict[tuple[str, str], SimResult], autoscaler: str
) -> None:
    """The outage backlog is gone within 300 s of its start; two fixed replicas take over 600 s."""
    result = runs[(autoscaler, "outage")]
    assert result.peak_lag >= 36_000
    assert max(result.desired) == result.spec.max_replicas
    cleared = result.backlog_cleared_s
    assert cleared is not None and cleared < SLA_S
    baseline = simulate(FIXED, SCENARIOS["outage"]).backlog_cleared_s
    assert baseline is not None and baseline > 2 * SLA_S


def test_scale_down_waits_for_the_stabilisation_window(
    runs: dict[tuple[str, str], SimResult],
) -> None:
    """After the backlog the count holds for the 300 s window, then drops one pod a minute."""
    result = runs[("adapter", "outage")]
    peak_at = result.desired.index(result.spec.max_replicas)
    first_drop = next(
        i
        for i in range(peak_at, len(result.desired))
        if result.desired[i] < result.spec.max_replicas
    )
    assert (
        result.times[first_drop] - result.times[peak_at] >= result.spec.scale_down.stabilization_s
    )
    drops = [
        result.times[i]
        for i in range(first_drop, len(result.desired))
        if result.desired[i] < result.desired[i - 1]
    ]
    assert all(later - earlier >= 60 for earlier, later in pairwise(drops))
    assert result.desired[-1] == result.spec.min_replicas


def test_day_shape_needs_no_more_than_the_minimum_at_the_planned_rate(
    runs: dict[tuple[str, str], SimResult],
) -> None:
    """At 150 e-mails/s per replica, two replicas carry the 200 orders/s peak: no lag builds."""
    result = runs[("adapter", "day")]
    assert max(result.desired) == result.spec.min_replicas
    assert result.peak_lag == 0


def test_a_slower_smtp_server_is_caught_by_the_lag_metric(specs: dict[str, AutoscalerSpec]) -> None:
    """At 80 e-mails/s per replica (half the plan) lag builds, the HPA adds a pod, the SLA holds."""
    result = simulate(specs["adapter"], SCENARIOS["day"], SimConfig(per_replica_per_s=80.0))
    assert max(result.desired) > result.spec.min_replicas
    assert result.within_sla


def test_plot_writes_a_png(runs: dict[tuple[str, str], SimResult], tmp_path: Path) -> None:
    """The plotting path renders every run into one PNG (docs/img/hpa-simulation.png's code)."""
    target = tmp_path / "sim.png"
    plot(list(runs.values()), target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert target.stat().st_size > 20_000
