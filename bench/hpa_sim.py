"""Simulates the notifier's autoscaler against the 5-minute promise, without a cluster.

The HorizontalPodAutoscaler is modelled as kube-controller-manager runs it (pkg/controller/
podautoscaler): every `sync_s` (15 s) each External metric with an AverageValue target proposes
``ceil(total / target)`` replicas unless ``total / (target x current)`` is within the 10 %
tolerance; the largest proposal wins; the scale-up window keeps the smallest recent proposal and
the scale-down window the largest; the policies cap the change against the count at the start of
each policy's period (selectPolicy Max = the largest change allowed); min/max clamp last. The
numbers come from the manifests (`spec_from_hpa`, `spec_from_scaled_object`); `ADAPTER` and
`KEDA` below mirror them and tests/deploy/test_hpa_simulation.py holds the two together.

The notifier side: e-mails arrive at the scenario's rate onto one FIFO stream; each ready
replica sends `per_replica_per_s` (150 by default: half the ~300/s measured on a busy 2-core
box); a new pod sends only `startup_s` after the HPA asked for it; during an SMTP outage, and
for `breaker_recovery_s` after it (the circuit breaker's longest cool-down), nothing is sent and
nothing is read, so the whole backlog is lag. The lag the HPA sees is `metric_delay_s` old
(notifier probe + scrape + adapter; KEDA asks Redis directly); the arrival rate is a rate()
over `rate_window_s`, just as old.

Sharded streams (`ACME_STREAM_SHARDS=N`, `Scenario.shards`): the arrivals spread evenly over N
FIFO streams (an order's shard is a hash of its id), and every replica serves every shard. Its
send rate, and its in-flight slots, go to the shards with work in equal shares, a share a shard
does not need going to the others (the consumer reads each busy shard's share of the free slots,
so no shard starves another and one shard alone can take nearly all of them). A shard may start
with a backlog of its own (`Scenario.backlog`): what is left on shard 0 after the shard count
grew, say. The autoscaler sees the lag summed over the shards (`lag_aggregation="sum"`: the
prometheus-adapter rule's sum(max by (stream) (...)), the KEDA cluster ScaledObject's formula),
or, for comparison, one metric per shard of which the HPA takes the largest proposal ("max":
KEDA's triggers without a formula).

Reported: replicas, lag and the age of the oldest waiting e-mail over time, the peak lag, and
the oldest age any e-mail reached before it was sent (it must stay under 300 s).

Usage: ``.tox/py311/bin/python bench/hpa_sim.py [--per-replica 150] [--shards 8] [--no-plot]``
writes docs/img/hpa-simulation.png (matplotlib: the `test` extra installs it); the sharded runs
are printed after the single-stream ones.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

__all__ = [
    "ADAPTER",
    "FIXED",
    "KEDA",
    "KEDA_CLUSTER",
    "SLA_S",
    "AutoscalerSpec",
    "Policy",
    "Rules",
    "Scenario",
    "SimConfig",
    "SimResult",
    "day_scenario",
    "max_of_shards",
    "outage_scenario",
    "plot",
    "reshard_scenario",
    "run_all",
    "run_sharded",
    "simulate",
    "spec_from_hpa",
    "spec_from_scaled_object",
    "summary",
]

SLA_S: Final = 300.0
ROOT: Final = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Policy:
    kind: str  # "Pods" or "Percent"
    value: int
    period_s: int


@dataclass(frozen=True)
class Rules:
    stabilization_s: int
    select: str  # "Max", "Min" or "Disabled"
    policies: tuple[Policy, ...]


@dataclass(frozen=True)
class AutoscalerSpec:
    name: str
    min_replicas: int
    max_replicas: int
    #: AverageValue target of the lag: lagging entries per replica.
    lag_target: float
    #: AverageValue target of the arrival rate: entries added per second per replica (None: the
    #: autoscaler has no such metric, as with KEDA's redis-streams scaler).
    rate_target: float | None
    scale_up: Rules
    scale_down: Rules
    metric_delay_s: float
    rate_window_s: float = 120.0
    #: How the shards' lags become proposals: "sum", one metric, the total lag (what every
    #: manifest does); "max", one metric per shard, the largest proposal winning (KEDA's
    #: per-shard triggers without a formula, kept for comparison).
    lag_aggregation: str = "sum"


_UP: Final = Rules(0, "Max", (Policy("Percent", 100, 15), Policy("Pods", 4, 15)))
_DOWN: Final = Rules(300, "Max", (Policy("Pods", 1, 60),))
#: Mirrors k8s/components/hpa-prometheus-adapter/hpa-notifier.yaml (probe 5 s + scrape 15 s +
#: adapter: the lag it sees is up to ~30 s old).
ADAPTER: Final = AutoscalerSpec("prometheus-adapter HPA", 2, 8, 3000.0, 150.0, _UP, _DOWN, 30.0)
#: Mirrors k8s/components/keda/scaledobject-notifier.yaml (KEDA reads XINFO GROUPS itself).
KEDA: Final = AutoscalerSpec("KEDA redis-streams", 2, 8, 3000.0, None, _UP, _DOWN, 5.0)
#: Mirrors k8s/components/keda-cluster/scaledobject-notifier.yaml: one redis-cluster-streams
#: trigger per shard, summed by the scalingModifiers formula against 3,000 per replica.
KEDA_CLUSTER: Final = AutoscalerSpec("KEDA cluster (sum)", 2, 8, 3000.0, None, _UP, _DOWN, 5.0)
#: The baseline: the autoscalers' minimum, never scaled.
FIXED: Final = AutoscalerSpec("no autoscaler (2 pods)", 2, 2, 3000.0, None, _UP, _DOWN, 0.0)


def _rules(raw: Mapping[str, Any]) -> Rules:
    return Rules(
        int(raw.get("stabilizationWindowSeconds", 0)),
        str(raw.get("selectPolicy", "Max")),
        tuple(Policy(p["type"], int(p["value"]), int(p["periodSeconds"])) for p in raw["policies"]),
    )


def spec_from_hpa(hpa: Mapping[str, Any], *, metric_delay_s: float = 30.0) -> AutoscalerSpec:
    """The simulation's view of an autoscaling/v2 HPA on the lag (and arrival-rate) metrics."""
    spec = hpa["spec"]
    targets = {
        m["external"]["metric"]["name"]: float(m["external"]["target"]["averageValue"])
        for m in spec["metrics"]
        if m["type"] == "External"
    }
    return AutoscalerSpec(
        name=f"HPA {hpa['metadata']['name']}",
        min_replicas=int(spec["minReplicas"]),
        max_replicas=int(spec["maxReplicas"]),
        lag_target=targets["acme_stream_lag_entries"],
        rate_target=targets.get("acme_events_published_per_second"),
        scale_up=_rules(spec["behavior"]["scaleUp"]),
        scale_down=_rules(spec["behavior"]["scaleDown"]),
        metric_delay_s=metric_delay_s,
    )


_STREAM_TRIGGERS: Final = ("redis-streams", "redis-cluster-streams")


def spec_from_scaled_object(
    scaled: Mapping[str, Any], *, metric_delay_s: float = 5.0
) -> AutoscalerSpec:
    """The simulation's view of a KEDA ScaledObject with redis-streams or redis-cluster-streams
    lagCount triggers: one (a single stream), or one per shard, either summed by a
    scalingModifiers formula (the formula's target per replica) or, without one, each its own
    metric (the HPA takes the largest proposal: "max")."""
    spec = scaled["spec"]
    triggers = [t for t in spec["triggers"] if t["type"] in _STREAM_TRIGGERS]
    if not triggers or len(triggers) != len(spec["triggers"]):
        raise ValueError("only redis(-cluster)-streams triggers are modelled")
    advanced = spec["advanced"]
    behavior = advanced["horizontalPodAutoscalerConfig"]["behavior"]
    modifiers = advanced.get("scalingModifiers")
    if modifiers:
        terms = sorted(term.strip() for term in str(modifiers["formula"]).split("+"))
        if terms != sorted(t["name"] for t in triggers):
            raise ValueError(f"only a sum of every trigger is modelled: {modifiers['formula']!r}")
        lag_target, aggregation = float(modifiers["target"]), "sum"
    else:
        (lag_target,) = {float(t["metadata"]["lagCount"]) for t in triggers}
        aggregation = "sum" if len(triggers) == 1 else "max"
    return AutoscalerSpec(
        name=f"KEDA {scaled['metadata']['name']}",
        min_replicas=int(spec["minReplicaCount"]),
        max_replicas=int(spec["maxReplicaCount"]),
        lag_target=lag_target,
        rate_target=None,
        scale_up=_rules(behavior["scaleUp"]),
        scale_down=_rules(behavior["scaleDown"]),
        metric_delay_s=metric_delay_s,
        lag_aggregation=aggregation,
    )


@dataclass(frozen=True)
class Scenario:
    name: str
    duration_s: int
    rate_per_s: Callable[[float], float]  # orders (= e-mails) per second at time t
    outage: tuple[float, float] | None = None  # SMTP down in [start, end)
    #: Event shards (ACME_STREAM_SHARDS): the arrivals spread evenly over them.
    shards: int = 1
    #: Entries already waiting on each shard at t = 0 (shard 0 first; missing shards: none),
    #: all published `backlog_age_s` before the start.
    backlog: tuple[float, ...] = ()
    backlog_age_s: float = 0.0


def day_scenario(low: float = 50.0, high: float = 200.0, duration_s: int = 1800) -> Scenario:
    """A day compressed into `duration_s`: low, ramp up, peak, ramp down, low (sixths)."""
    sixth = duration_s / 6

    def rate(t: float) -> float:
        if t < sixth or t >= 5 * sixth:
            return low
        if t < 2 * sixth:
            return low + (high - low) * (t - sixth) / sixth
        if t < 4 * sixth:
            return high
        return high - (high - low) * (t - 4 * sixth) / sixth

    return Scenario(f"day {low:g} -> {high:g} -> {low:g} orders/s", duration_s, rate)


def outage_scenario(
    rate_per_s: float = 200.0,
    start_s: float = 300.0,
    outage_s: float = 180.0,
    duration_s: int = 1500,
    shards: int = 1,
) -> Scenario:
    """A steady rate with the SMTP server down for `outage_s` from `start_s`, the events spread
    over `shards` streams."""
    name = f"{outage_s / 60:g}-minute SMTP outage at {rate_per_s:g} orders/s"
    if shards > 1:
        name = f"{outage_s / 60:g}-min outage, {rate_per_s:g}/s over {shards} shards"
    return Scenario(
        name, duration_s, lambda _t: rate_per_s, (start_s, start_s + outage_s), shards=shards
    )


def reshard_scenario(
    shards: int = 8,
    left_on_shard_0: float = 9000.0,
    age_s: float = 60.0,
    rate_per_s: float = 200.0,
    duration_s: int = 900,
) -> Scenario:
    """The shard count has just grown from 1 to `shards`: new events spread over every shard,
    while the old stream, now shard 0, still holds a backlog (`left_on_shard_0` entries, the
    oldest `age_s` old). Every replica reads shard 0 too, so all of them drain it, with the time
    the other shards leave them."""
    return Scenario(
        f"1->{shards} shards, {left_on_shard_0:,.0f} left on shard 0",
        duration_s,
        lambda _t: rate_per_s,
        shards=shards,
        backlog=(left_on_shard_0,),
        backlog_age_s=age_s,
    )


@dataclass(frozen=True)
class SimConfig:
    per_replica_per_s: float = 150.0
    startup_s: float = 20.0
    sync_s: float = 15.0
    tolerance: float = 0.1
    breaker_recovery_s: float = 30.0
    #: In-flight entries per replica (ACME_NOTIFY_CONCURRENCY): read, so pending, not lag.
    concurrency: int = 64
    step_s: float = 1.0


@dataclass
class SimResult:
    spec: AutoscalerSpec
    scenario: Scenario
    config: SimConfig
    times: list[float] = field(default_factory=list)
    arrival_per_s: list[float] = field(default_factory=list)
    desired: list[int] = field(default_factory=list)
    ready: list[int] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)  # summed over the shards
    shard_lag: list[tuple[float, ...]] = field(default_factory=list)  # each shard's, shard 0 first
    oldest_age_s: list[float] = field(default_factory=list)
    max_wait_s: float = 0.0  # oldest age any e-mail reached before it was sent

    @property
    def peak_lag(self) -> float:
        return max(self.lag)

    @property
    def replica_range(self) -> tuple[int, int]:
        return min(self.desired), max(self.desired)

    @property
    def backlog_cleared_s(self) -> float | None:
        """Seconds from the outage's start (or from t = 0 for a scenario that starts with a
        backlog) until nothing waits any more (None: neither, or never)."""
        if self.scenario.outage is not None:
            start, end = self.scenario.outage
        elif any(self.scenario.backlog):
            start = end = 0.0
        else:
            return None
        for t, age in zip(self.times, self.oldest_age_s, strict=True):
            if t >= end and age < 2.0:
                return t - start
        return None

    @property
    def pod_minutes(self) -> float:
        """What the run cost: desired replicas integrated over time, in pod-minutes."""
        step = self.times[1] - self.times[0] if len(self.times) > 1 else 1.0
        return sum(self.desired) * step / 60

    @property
    def worst_age_s(self) -> float:
        """The oldest any e-mail got: sent ones at sending, unsent ones at the end of the run."""
        return max(self.max_wait_s, max(self.oldest_age_s))

    @property
    def within_sla(self) -> bool:
        return self.worst_age_s < SLA_S


class _Hpa:
    """The controller's state: its recommendations and scale events, as the real one keeps them."""

    def __init__(self, spec: AutoscalerSpec, tolerance: float) -> None:
        self.spec = spec
        self.tolerance = tolerance
        self.recommendations: list[tuple[float, int]] = []
        self.up_events: list[tuple[float, int]] = []
        self.down_events: list[tuple[float, int]] = []

    def _proposal(self, total: float, target: float, current: int) -> int:
        ratio = total / (target * current)
        return current if abs(1.0 - ratio) <= self.tolerance else math.ceil(total / target)

    @staticmethod
    def _changed(events: list[tuple[float, int]], now: float, period_s: int) -> int:
        return sum(n for t, n in events if t > now - period_s)

    def _start(self, now: float, current: int, period_s: int) -> int:
        added = self._changed(self.up_events, now, period_s)
        return current - added + self._changed(self.down_events, now, period_s)

    def _up_limit(self, now: float, current: int) -> int:
        rules = self.spec.scale_up
        if rules.select == "Disabled":
            return current
        limits = [
            self._start(now, current, p.period_s) + p.value
            if p.kind == "Pods"
            else math.ceil(self._start(now, current, p.period_s) * (1 + p.value / 100))
            for p in rules.policies
        ]
        return min(limits) if rules.select == "Min" else max(limits)

    def _down_limit(self, now: float, current: int) -> int:
        rules = self.spec.scale_down
        if rules.select == "Disabled":
            return current
        limits = [
            self._start(now, current, p.period_s) - p.value
            if p.kind == "Pods"
            else int(self._start(now, current, p.period_s) * (1 - p.value / 100))
            for p in rules.policies
        ]
        return max(limits) if rules.select == "Min" else min(limits)

    def decide(self, now: float, current: int, lags: Sequence[float], rate: float) -> int:
        """One sync: `lags` are the shards' lags as the metric shows them."""
        spec = self.spec
        if spec.lag_aggregation == "max":
            desired = max(self._proposal(lag, spec.lag_target, current) for lag in lags)
        else:
            desired = self._proposal(sum(lags), spec.lag_target, current)
        if spec.rate_target is not None:
            desired = max(desired, self._proposal(rate, spec.rate_target, current))
        # Stabilisation: the smallest proposal of the scale-up window, the largest of the
        # scale-down window, each including this one.
        up = min(
            [desired]
            + [r for t, r in self.recommendations if t > now - spec.scale_up.stabilization_s]
        )
        down = max(
            [desired]
            + [r for t, r in self.recommendations if t > now - spec.scale_down.stabilization_s]
        )
        self.recommendations.append((now, desired))
        keep_s = max(spec.scale_up.stabilization_s, spec.scale_down.stabilization_s)
        self.recommendations = [(t, r) for t, r in self.recommendations if t > now - keep_s]
        stabilized = min(max(current, up), down)
        # Rate limits, then the bounds.
        if stabilized > current:
            new = min(stabilized, max(self._up_limit(now, current), current), spec.max_replicas)
        elif stabilized < current:
            new = max(stabilized, min(self._down_limit(now, current), current), spec.min_replicas)
        else:
            new = stabilized
        new = max(spec.min_replicas, min(spec.max_replicas, new))
        if new > current:
            self.up_events.append((now, new - current))
        elif new < current:
            self.down_events.append((now, current - new))
        return new


def _fair_split(total: float, demands: Sequence[float]) -> list[float]:
    """`total` shared among the shards with demand in equal parts, what a shard does not need
    going to the others (max-min fair): each gets min(its demand, its share)."""
    if len(demands) == 1:
        return [total]
    shares = [0.0] * len(demands)
    left = total
    hungry = [i for i, demand in enumerate(demands) if demand > 0]
    while hungry and left > 1e-9:
        share = left / len(hungry)
        still = [i for i in hungry if demands[i] - shares[i] > share]
        for i in hungry:
            give = share if i in still else demands[i] - shares[i]
            shares[i] += give
            left -= give
        if len(still) == len(hungry):
            break
        hungry = still
    return shares


def simulate(
    spec: AutoscalerSpec, scenario: Scenario, config: SimConfig | None = None
) -> SimResult:
    """Runs one scenario second by second; returns the series and the SLA figures."""
    cfg = config or SimConfig()
    hpa = _Hpa(spec, cfg.tolerance)
    result = SimResult(spec, scenario, cfg)
    n = scenario.shards
    # Per shard: [arrival time, e-mails] batches, oldest first, and how many wait in all.
    queues: list[deque[list[float]]] = [deque() for _ in range(n)]
    queued = [0.0] * n
    for index, entries in enumerate(scenario.backlog):
        if entries > 0:
            queues[index].append([-scenario.backlog_age_s, entries])
            queued[index] += entries
    arrived_total = 0.0
    arrived_at: list[float] = []  # cumulative arrivals at the start of each step
    lag_at: list[tuple[float, ...]] = []  # each shard's lag at the start of each step
    desired = spec.min_replicas
    pods: list[float] = [0.0] * desired  # when each pod starts (or started) sending
    next_sync = cfg.sync_s
    dt = cfg.step_s
    steps = int(scenario.duration_s / dt)
    for step in range(steps):
        now = step * dt
        down = scenario.outage is not None and (
            scenario.outage[0] <= now < scenario.outage[1] + cfg.breaker_recovery_s
        )
        ready = sum(1 for ready_at in pods if ready_at <= now)
        if down:
            lags = tuple(queued)
        elif n == 1:
            lags = (max(0.0, queued[0] - cfg.concurrency * ready),)
        else:
            # In-flight entries (read, so pending, not lag) take the send slots, shared out.
            slots = _fair_split(cfg.concurrency * ready, queued)
            lags = tuple(max(0.0, q - s) for q, s in zip(queued, slots, strict=True))
        arrived_at.append(arrived_total)
        lag_at.append(lags)
        if now >= next_sync:
            next_sync += cfg.sync_s
            seen = max(0, step - int(spec.metric_delay_s / dt))
            window = max(1, int(spec.rate_window_s / dt))
            rate = (arrived_at[seen] - arrived_at[max(0, seen - window)]) / (
                min(seen, window) * dt or dt
            )
            new = hpa.decide(now, desired, lag_at[seen], rate)
            if new > desired:
                pods.extend([now + cfg.startup_s] * (new - desired))
            elif new < desired:
                # The controller removes the youngest pods first (not yet ready ones among them).
                pods.sort()
                del pods[new:]
            desired = new
        arriving = scenario.rate_per_s(now) * dt
        for index in range(n):
            queues[index].append([now, arriving / n])
            queued[index] += arriving / n
        arrived_total += arriving
        budgets = _fair_split(0.0 if down else ready * cfg.per_replica_per_s * dt, queued)
        for index, budget in enumerate(budgets):
            queue = queues[index]
            while budget > 0 and queue:
                batch = queue[0]
                taken = min(budget, batch[1])
                batch[1] -= taken
                budget -= taken
                queued[index] -= taken
                result.max_wait_s = max(result.max_wait_s, now + dt - batch[0])
                if batch[1] <= 1e-9:
                    queue.popleft()
        heads = [queue[0][0] for queue in queues if queue]
        result.times.append(now)
        result.arrival_per_s.append(arriving / dt)
        result.desired.append(desired)
        result.ready.append(ready)
        result.lag.append(sum(lags))
        result.shard_lag.append(lags)
        result.oldest_age_s.append(now - min(heads) if heads else 0.0)
    return result


def summary(result: SimResult) -> str:
    low, high = result.replica_range
    verdict = "OK" if result.within_sla else "MISSED"
    cleared = result.backlog_cleared_s
    since = "the outage began" if result.scenario.outage is not None else "the start"
    drain = "" if cleared is None else f" | backlog gone {cleared:>4.0f} s after {since}"
    return (
        f"{result.spec.name:<22} | {result.scenario.name:<36} | "
        f"{result.config.per_replica_per_s:>3g}/s per pod | replicas {low}..{high} | "
        f"peak lag {result.peak_lag:>6,.0f} | oldest e-mail {result.worst_age_s:>3.0f} s "
        f"(SLA {SLA_S:.0f} s: {verdict}){drain}"
    )


def timeline(result: SimResult, every_s: float) -> str:
    rows = ["     t  orders/s  desired  ready       lag  oldest waiting"]
    stride = max(1, int(every_s / (result.times[1] - result.times[0])))
    for i in range(0, len(result.times), stride):
        rows.append(
            f"{result.times[i]:>6.0f}  {result.arrival_per_s[i]:>8.0f}  {result.desired[i]:>7}"
            f"  {result.ready[i]:>5}  {result.lag[i]:>8,.0f}  {result.oldest_age_s[i]:>10.0f} s"
        )
    return "\n".join(rows)


def plot(results: Sequence[SimResult], path: Path) -> None:
    """Replicas, lag and the oldest waiting e-mail over time: a column per scenario and rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = list(dict.fromkeys((r.scenario.name, r.config.per_replica_per_s) for r in results))
    fig, axes = plt.subplots(
        3, len(columns), figsize=(6.5 * len(columns), 9), sharex="col", squeeze=False
    )
    for col, (name, per_replica) in enumerate(columns):
        runs = [
            r
            for r in results
            if (r.scenario.name, r.config.per_replica_per_s) == (name, per_replica)
        ]
        ax_rep, ax_lag, ax_age = axes[0][col], axes[1][col], axes[2][col]
        ax_rep.set_title(f"{name}\n{per_replica:g} e-mails/s per replica", fontsize=10)
        for r in runs:
            minutes = [t / 60 for t in r.times]
            ax_rep.step(minutes, r.desired, where="post", label=f"{r.spec.name}: desired")
            ax_rep.step(
                minutes, r.ready, where="post", linestyle=":", label=f"{r.spec.name}: sending"
            )
            ax_lag.plot(minutes, r.lag, label=r.spec.name)
            ax_age.plot(
                minutes, r.oldest_age_s, label=f"{r.spec.name} (worst {r.worst_age_s:.0f} s)"
            )
        rate_ax = ax_rep.twinx()
        rate_ax.plot(
            [t / 60 for t in runs[0].times], runs[0].arrival_per_s, color="grey", alpha=0.5
        )
        rate_ax.set_ylim(0, max(runs[0].arrival_per_s) * 1.3)
        rate_ax.set_ylabel("orders/s (grey)")
        ax_rep.set_ylim(0, max(r.spec.max_replicas for r in runs) + 1)
        ax_lag.set_ylim(bottom=0)
        ax_age.set_ylim(0, SLA_S * 1.15)
        ax_age.axhline(SLA_S, color="red", linestyle="--", label="SLA 300 s")
        outage = runs[0].scenario.outage
        for ax in (ax_rep, ax_lag, ax_age):
            if outage is not None:
                recovered = outage[1] + runs[0].config.breaker_recovery_s
                ax.axvspan(outage[0] / 60, outage[1] / 60, color="red", alpha=0.10)
                ax.axvspan(outage[1] / 60, recovered / 60, color="orange", alpha=0.10)
            ax.grid(alpha=0.3)
        ax_rep.set_ylabel("notifier replicas")
        ax_lag.set_ylabel("stream lag (entries)")
        ax_age.set_ylabel("oldest waiting e-mail (s)")
        ax_age.set_xlabel("minutes (red: SMTP down; orange: breaker cool-down)")
        ax_rep.legend(fontsize=7, loc="lower right")
        ax_lag.legend(fontsize=7, loc="upper right")
        ax_age.legend(fontsize=7, loc="upper right")
    fig.suptitle("Notifier autoscaling, simulated (bench/hpa_sim.py)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_all(
    config: SimConfig, specs: Sequence[AutoscalerSpec] = (ADAPTER, KEDA)
) -> list[SimResult]:
    """Scenario (a), the day, and (b), the SMTP outage, for each autoscaler."""
    return [
        simulate(spec, scenario, config)
        for scenario in (day_scenario(), outage_scenario())
        for spec in specs
    ]


def run_sharded(
    config: SimConfig,
    specs: Sequence[AutoscalerSpec] = (ADAPTER, KEDA_CLUSTER),
    shards: int = 8,
) -> list[SimResult]:
    """Scenario (c), the SMTP outage with the events spread over `shards` shards, and (d), the
    shard count just grown from 1 to `shards` with a backlog left on shard 0, for each
    autoscaler."""
    return [
        simulate(spec, scenario, config)
        for scenario in (outage_scenario(shards=shards), reshard_scenario(shards=shards))
        for spec in specs
    ]


def max_of_shards(spec: AutoscalerSpec, shards: int) -> list[AutoscalerSpec]:
    """What KEDA's per-shard triggers would do without the formula: the largest proposal wins,
    with each trigger's lagCount the whole target or the target split over the shards."""
    return [
        replace(spec, name=f"max per shard, {target:g}", lag_target=target, lag_aggregation="max")
        for target in (spec.lag_target, spec.lag_target / shards)
    ]


def _shard_count(text: str) -> int:
    count = int(text)
    if not 2 <= count <= 256:
        raise argparse.ArgumentTypeError(f"{count}: the sharded runs take 2 to 256 shards")
    return count


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--per-replica", type=float, default=150.0, help="e-mails/s one replica sends (150)"
    )
    parser.add_argument("--startup-s", type=float, default=20.0, help="pod start-up delay (20 s)")
    parser.add_argument(
        "--every", type=float, default=60.0, help="timeline row every N s (60; 0: none)"
    )
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "hpa-simulation.png")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--shards",
        type=_shard_count,
        default=8,
        metavar="N",
        help="event shards of the sharded scenarios (8; 2..256)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = replace(SimConfig(), per_replica_per_s=args.per_replica, startup_s=args.startup_s)
    results = run_all(config)
    # What the planning margin buys: replicas at 80/s (a slow SMTP server) on the same manifests,
    # and the outage without any autoscaler.
    slow = replace(config, per_replica_per_s=min(80.0, config.per_replica_per_s))
    extra = [simulate(spec, day_scenario(), slow) for spec in (ADAPTER, KEDA)]
    extra.append(simulate(FIXED, outage_scenario(), config))
    print(
        f"pod start-up {config.startup_s:g} s, HPA sync {config.sync_s:g} s, "
        f"tolerance {config.tolerance:.0%}, breaker recovery {config.breaker_recovery_s:g} s"
    )
    for result in [*results, *extra]:
        if args.every > 0:
            print(f"\n{result.spec.name} - {result.scenario.name}")
            print(timeline(result, args.every))
    print()
    for result in [*results, *extra]:
        print(summary(result))
    # Sharded streams: the lag summed over the shards (what the manifests do), and what a max
    # over per-shard metrics would do instead.
    sharded = run_sharded(config, shards=args.shards)
    compared = [
        simulate(spec, scenario, config)
        for scenario in (outage_scenario(shards=args.shards), reshard_scenario(args.shards))
        for spec in max_of_shards(KEDA_CLUSTER, args.shards)
    ]
    print(f"\n{args.shards} event shards (ACME_STREAM_SHARDS={args.shards}), lag summed over them:")
    for result in sharded:
        if args.every > 0:
            print(f"\n{result.spec.name} - {result.scenario.name}")
            print(timeline(result, args.every))
    for result in [*sharded, *compared]:
        print(f"{summary(result)} | {result.pod_minutes:,.0f} pod-min")
    if not args.no_plot:
        plot([*results, *extra[:2]], args.plot)
        print(f"\nplot: {args.plot}")
    return 0 if all(r.within_sla for r in [*results, *sharded]) else 1


if __name__ == "__main__":
    sys.exit(main())
