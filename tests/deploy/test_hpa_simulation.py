"""The notifier's autoscaling, simulated on the manifests' own numbers, keeps the promise.

bench/hpa_sim.py models the HPA controller (15 s sync, 10 % tolerance, stabilisation windows,
scaling policies) and a FIFO stream drained by `per_replica_per_s` e-mails/s per ready pod. Here
it runs on the HPA and the ScaledObjects exactly as the prod overlays render them, with one
stream and with the events spread over prod-cluster's shards.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pytest
from bench.hpa_sim import (
    ADAPTER,
    FIXED,
    KEDA,
    KEDA_CLUSTER,
    SLA_S,
    AutoscalerSpec,
    SimConfig,
    SimResult,
    day_scenario,
    main,
    max_of_shards,
    outage_scenario,
    plot,
    reshard_scenario,
    run_sharded,
    simulate,
    spec_from_hpa,
    spec_from_scaled_object,
)

from tests.deploy.manifests import Obj, config_map_data, named, of_kind, shards_read

SCENARIOS = {"day": day_scenario(), "outage": outage_scenario()}
#: prod-cluster's shard count (tests/deploy/test_manifests_valid.py holds it to the overlay).
SHARDS = 8
SHARDED = {
    "outage": outage_scenario(shards=SHARDS),
    "reshard": reshard_scenario(shards=SHARDS),
}


@pytest.fixture(scope="module")
def specs(rendered: dict[str, list[Obj]]) -> dict[str, AutoscalerSpec]:
    """The simulation's view of the notifier's HPA (prod) and ScaledObjects (prod-keda,
    prod-cluster)."""
    (scaled,) = of_kind(rendered["prod-keda"], "ScaledObject")
    (cluster,) = of_kind(rendered["prod-cluster"], "ScaledObject")
    return {
        "adapter": spec_from_hpa(
            named(rendered["prod"], "HorizontalPodAutoscaler", "acme-notifier")
        ),
        "keda": spec_from_scaled_object(scaled),
        "keda-cluster": spec_from_scaled_object(cluster),
    }


@pytest.fixture(scope="module")
def runs(specs: dict[str, AutoscalerSpec]) -> dict[tuple[str, str], SimResult]:
    return {
        (autoscaler, scenario): simulate(spec, SCENARIOS[scenario])
        for autoscaler, spec in specs.items()
        for scenario in SCENARIOS
    }


def test_simulation_defaults_mirror_the_manifests(specs: dict[str, AutoscalerSpec]) -> None:
    """bench/hpa_sim.py's ADAPTER, KEDA and KEDA_CLUSTER are the rendered HPA and ScaledObjects,
    field by field; the cluster one sums its shards (the formula), like the adapter's rule."""
    assert replace(specs["adapter"], name=ADAPTER.name) == ADAPTER
    assert replace(specs["keda"], name=KEDA.name) == KEDA
    assert replace(specs["keda-cluster"], name=KEDA_CLUSTER.name) == KEDA_CLUSTER
    assert KEDA_CLUSTER.lag_aggregation == ADAPTER.lag_aggregation == "sum"


def test_sharded_scenarios_use_the_cluster_overlays_shard_count(
    rendered: dict[str, list[Obj]],
) -> None:
    """The sharded runs below have as many shards as prod-cluster's ACME_STREAM_SHARDS."""
    assert shards_read(config_map_data(rendered["prod-cluster"])) == SHARDS
    assert {scenario.shards for scenario in SHARDED.values()} == {SHARDS}


def test_a_scaled_object_without_a_formula_is_modelled_as_the_max_of_its_triggers(
    rendered: dict[str, list[Obj]],
) -> None:
    """Without scalingModifiers each trigger is its own HPA metric: the largest proposal wins."""
    (cluster,) = of_kind(rendered["prod-cluster"], "ScaledObject")
    plain = copy.deepcopy(cluster)
    del plain["spec"]["advanced"]["scalingModifiers"]
    spec = spec_from_scaled_object(plain)
    assert spec.lag_aggregation == "max"
    assert spec.lag_target == KEDA_CLUSTER.lag_target
    broken = copy.deepcopy(cluster)
    broken["spec"]["advanced"]["scalingModifiers"]["formula"] = "shard_000 + shard_001"
    with pytest.raises(ValueError, match="sum of every trigger"):
        spec_from_scaled_object(broken)


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


# ---- sharded streams -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sharded_runs(specs: dict[str, AutoscalerSpec]) -> dict[tuple[str, str], SimResult]:
    return {
        (autoscaler, scenario): simulate(specs[autoscaler], SHARDED[scenario])
        for autoscaler in ("adapter", "keda-cluster")
        for scenario in SHARDED
    }


@pytest.mark.parametrize("scenario", sorted(SHARDED))
@pytest.mark.parametrize("autoscaler", ["adapter", "keda-cluster"])
def test_sharded_streams_keep_the_sla_and_clear_the_backlog_in_time(
    sharded_runs: dict[tuple[str, str], SimResult], autoscaler: str, scenario: str
) -> None:
    """Summed over 8 shards, the lag scales the notifier as one stream's did: the outage backlog
    spread over the shards, and a backlog left on shard 0 alone, are gone well within 300 s."""
    result = sharded_runs[(autoscaler, scenario)]
    assert result.within_sla
    cleared = result.backlog_cleared_s
    assert cleared is not None and cleared < SLA_S
    assert min(result.desired) >= result.spec.min_replicas
    assert max(result.desired) <= result.spec.max_replicas
    assert all(len(lags) == SHARDS for lags in result.shard_lag)
    assert result.lag == [sum(lags) for lags in result.shard_lag]


@pytest.mark.parametrize("autoscaler", ["adapter", "keda-cluster"])
def test_an_even_spread_over_shards_scales_exactly_like_one_stream(
    specs: dict[str, AutoscalerSpec],
    sharded_runs: dict[tuple[str, str], SimResult],
    autoscaler: str,
) -> None:
    """The same outage on 1 stream and on 8: the same replica counts, second by second, and the
    same total lag (each shard holds an eighth of it)."""
    one = simulate(specs[autoscaler], outage_scenario())
    eight = sharded_runs[(autoscaler, "outage")]
    assert eight.desired == one.desired
    assert eight.lag == pytest.approx(one.lag, abs=1e-6)
    peak = eight.shard_lag[eight.lag.index(eight.peak_lag)]
    assert max(peak) == pytest.approx(min(peak))


def test_a_backlog_left_on_one_shard_is_drained_by_every_replica(
    sharded_runs: dict[tuple[str, str], SimResult],
) -> None:
    """After growing from 1 to 8 shards, the old stream (shard 0) still holds 9,000 entries: the
    sum asks for ceil(9,000 / 3,000) = 3 replicas, shard 0 gets what the others leave of their
    time, and it drains while the other shards never lag."""
    result = sharded_runs[("keda-cluster", "reshard")]
    assert max(result.desired) == 3
    first = result.shard_lag[0]
    assert first[0] > 8000 and max(first[1:]) == 0
    assert all(max(lags[1:]) == 0 for lags in result.shard_lag)
    cleared = result.backlog_cleared_s
    assert cleared is not None and cleared < 120


def test_the_sum_is_right_where_a_max_over_shards_is_not(
    specs: dict[str, AutoscalerSpec], sharded_runs: dict[tuple[str, str], SimResult]
) -> None:
    """Why the formula: a max over per-shard triggers with the whole target (3,000 each) never
    scales for an outage spread over 8 shards (like 2 fixed pods: backlog past 600 s); with the
    target split over the shards (375) it scales to the maximum for a backlog that 3 replicas
    drain (over twice the pod-minutes). The sum does both right."""
    whole, split = max_of_shards(specs["keda-cluster"], SHARDS)
    assert (whole.lag_target, split.lag_target) == (3000.0, 375.0)
    spread = simulate(whole, SHARDED["outage"])
    assert max(spread.desired) == spread.spec.min_replicas
    cleared = spread.backlog_cleared_s
    assert cleared is not None and cleared > 2 * SLA_S
    summed = sharded_runs[("keda-cluster", "outage")]
    assert summed.backlog_cleared_s is not None and summed.backlog_cleared_s < SLA_S
    uneven = simulate(split, SHARDED["reshard"])
    summed_uneven = sharded_runs[("keda-cluster", "reshard")]
    assert max(uneven.desired) == uneven.spec.max_replicas
    assert max(summed_uneven.desired) == 3
    assert uneven.pod_minutes > 2 * summed_uneven.pod_minutes


def test_run_sharded_and_main_report_the_sharded_cases(capsys: pytest.CaptureFixture[str]) -> None:
    """`bench/hpa_sim.py` prints its single-stream lines first, unchanged, then the sharded
    ones; it exits 0 when every summed run keeps the SLA."""
    assert len(run_sharded(SimConfig(), shards=4)) == 4
    assert main(["--no-plot", "--every", "0"]) == 0
    out = capsys.readouterr().out
    single, _, sharded = out.partition(f"{SHARDS} event shards (ACME_STREAM_SHARDS={SHARDS})")
    assert "3-minute SMTP outage at 200 orders/s" in single
    assert "shards" not in single
    for name in ("prometheus-adapter HPA", KEDA_CLUSTER.name, "max per shard, 375"):
        assert name in sharded
    assert "MISSED" not in out
