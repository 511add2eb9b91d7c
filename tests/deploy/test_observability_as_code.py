"""Dashboards, alerts and autoscaling metrics name series the code really exports.

The metric names come from instantiating the services' registries (`OrdersMetrics`,
`NotifyMetrics`); `up` and kube-state-metrics' `kube_*` series are the only others allowed.
The alert rules are checked structurally and by promtool (unpacked from Debian's package when it
is not installed).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from acme_notify import probe
from acme_notify.telemetry import NotifyMetrics
from acme_runtime import channels
from acme_runtime.channels import EVENTS_STREAM, NOTIFIER_GROUP
from tests.deploy.manifests import (
    EXTERNAL_SERIES,
    K8S,
    Obj,
    balanced,
    code_series_names,
    dashboard_queries,
    named,
    of_kind,
    pod_labels,
    promql_metric_names,
)

OBSERVABILITY = K8S / "observability"
SLA_S = 300
DURATION = re.compile(r"^\d+(ms|s|m|h|d)$")


def _rules() -> list[Obj]:
    document = yaml.safe_load((OBSERVABILITY / "prometheus-rules.yaml").read_text())
    return [rule for group in document["spec"]["groups"] for rule in group["rules"]]


def _dashboard() -> Obj:
    dashboard: Obj = json.loads((OBSERVABILITY / "grafana-dashboard.json").read_text())
    return dashboard


def _adapter_rules() -> list[Obj]:
    values = yaml.safe_load((OBSERVABILITY / "prometheus-adapter-values.yaml").read_text())
    rules: list[Obj] = values["rules"]["external"]
    return rules


def _unknown(names: set[str], known: set[str]) -> set[str]:
    return {n for n in names if n not in known and not EXTERNAL_SERIES.match(n)}


def test_dashboard_queries_name_only_exported_series() -> None:
    """Every dashboard query (and the namespace variable) selects series the code exports."""
    known = code_series_names()
    dashboard = _dashboard()
    queries = list(dashboard_queries(dashboard))
    assert len(queries) >= 15
    for where, expr in queries:
        assert balanced(expr), where
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert not _unknown(names, known), f"{where}: {_unknown(names, known)}"
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            (series,) = re.findall(
                r"label_values\(\s*([a-z_:][a-z0-9_:]*)\s*,", variable["definition"]
            )
            assert series in known


def test_dashboard_covers_the_operating_questions() -> None:
    """Throughput, latency by route, e2e vs SLA, lag, ages, dead letters, replicas, circuit,
    and each SMTP provider's sends and breaker."""
    exprs = " ".join(expr for _where, expr in dashboard_queries(_dashboard()))
    for needle in (
        "acme_orders_created_total",
        "acme_notify_emails_sent_total",
        "sum by (le, route) (rate(acme_http_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(acme_notify_e2e_latency_seconds_bucket",
        "acme_stream_lag_entries",
        "acme_stream_oldest_pending_age_seconds",
        "acme_stream_oldest_unread_age_seconds",
        "acme_notify_dead_lettered_total",
        "kube_deployment_status_replicas",
        "acme_notify_circuit_state",
        "sum by (provider, outcome) (rate(acme_notify_provider_sends_total",
        "acme_notify_provider_circuit_state",
    ):
        assert needle in exprs, needle


def test_alert_rules_are_complete_and_name_only_exported_series() -> None:
    """Each rule: unique name, balanced expr of known series, `for`, severity, summary, text."""
    known = code_series_names()
    rules = _rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for rule in rules:
        where = rule["alert"]
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, where
        assert balanced(rule["expr"]), where
        metrics = promql_metric_names(rule["expr"])
        assert metrics and not _unknown(metrics, known), f"{where}: {_unknown(metrics, known)}"
        assert DURATION.match(rule["for"]), where
        assert rule["labels"]["severity"] in {"warning", "critical"}, where
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], where


def test_alerts_cover_the_sla_the_dead_letters_and_the_processes() -> None:
    """Ages warn and page before 300 s; dead letters, circuit, 5xx ratio and `up` are watched."""
    rules = {rule["alert"]: rule for rule in _rules()}
    for series in (
        "acme_stream_oldest_pending_age_seconds",
        "acme_stream_oldest_unread_age_seconds",
        "acme_outbox_oldest_unconfirmed_age_seconds",
    ):
        thresholds = {
            rule["labels"]["severity"]: float(rule["expr"].rsplit(">", 1)[1])
            for rule in rules.values()
            if series in rule["expr"]
        }
        assert thresholds["warning"] < thresholds["critical"] < SLA_S, series
    exprs = " ".join(rule["expr"] for rule in rules.values())
    assert "acme_notify_dead_lettered_total" in exprs
    assert 'status=~"5.."' in exprs
    assert "acme_notify_circuit_state" in rules["AcmeSmtpCircuitOpen"]["expr"]
    for job in ("acme-api", "acme-relay", "acme-notifier"):
        assert f'absent(up{{job="{job}"}})' in exprs, job


def test_alert_job_labels_are_pod_names_the_pod_monitor_maps(
    rendered: dict[str, list[Obj]], observability: list[Obj]
) -> None:
    """`job="..."` in rules and dashboard equals a pod's app.kubernetes.io/name (the jobLabel)."""
    (monitor,) = of_kind(observability, "PodMonitor")
    jobs = {
        pod_labels(d)[monitor["spec"]["jobLabel"]] for d in of_kind(rendered["prod"], "Deployment")
    }
    text = (OBSERVABILITY / "prometheus-rules.yaml").read_text()
    text += (OBSERVABILITY / "grafana-dashboard.json").read_text().replace('\\"', '"')
    used = set(re.findall(r'job="([^"]+)"', text))
    assert used and used <= jobs, used - jobs


def test_promtool_accepts_the_rules(tmp_path: Path, promtool: str) -> None:
    """promtool check rules passes on the PrometheusRule's groups (a plain rules file)."""
    document = yaml.safe_load((OBSERVABILITY / "prometheus-rules.yaml").read_text())
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": document["spec"]["groups"]}))
    out = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_adapter_rules_expose_code_metrics_with_max_for_the_lag() -> None:
    """Each external rule reads a series the code exports; the lag is max()ed across pods per
    stream, then summed over the streams (the shards): never summed across pods."""
    known = code_series_names()
    rules = {rule["name"]["as"]: rule for rule in _adapter_rules()}
    for exposed, rule in rules.items():
        (series,) = promql_metric_names(rule["seriesQuery"])
        assert series in known, exposed
        assert re.fullmatch(rule["name"]["matches"], series), exposed
        assert "<<.Series>>{<<.LabelMatchers>>" in rule["metricsQuery"], exposed
        assert rule["resources"]["overrides"]["namespace"]["resource"] == "namespace"
    lag = " ".join(rules["acme_stream_lag_entries"]["metricsQuery"].split())
    outer, _, inner = lag.partition("(max by (stream")
    assert outer.startswith("sum") and inner, lag
    assert "sum" not in inner, "summed across pods: grows with the replica count"


def _adapter_query(rule: Obj, namespace: str = "acme") -> str:
    """The PromQL prometheus-adapter sends for the HPA's selector `group=notifier`."""
    matchers = f'namespace="{namespace}",group="{NOTIFIER_GROUP}"'
    query: str = rule["metricsQuery"]
    return query.replace("<<.Series>>", "acme_stream_lag_entries").replace(
        "<<.LabelMatchers>>", matchers
    )


def _lag_series(pods: int, lags: dict[str, float], namespace: str = "acme") -> list[Obj]:
    """promtool input: every pod reports the same value for each stream, as the probe does."""
    return [
        {
            "series": f'acme_stream_lag_entries{{namespace="{namespace}",pod="acme-notifier-{pod}",'
            f'stream="{stream}",group="{NOTIFIER_GROUP}"}}',
            "values": f"{value:g}x10",
        }
        for pod in range(pods)
        for stream, value in lags.items()
    ]


#: shard i's events stream: `{acme}:events` for shard 0, `{acme:i}:events` after.
_EIGHT = {
    ("{acme}:events" if i == 0 else f"{{acme:{i}}}:events"): 1000.0 * (i + 1) for i in range(8)
}


def test_adapter_lag_query_sums_the_shards_once_whatever_the_replica_count(
    tmp_path: Path, promtool: str
) -> None:
    """promtool evaluates the adapter's lag query on series shaped like the probe's: 3 pods x 8
    shards is the sum of the 8 shards (36,000), not 3 times it; a rollout where a new pod reports
    fewer shards changes nothing; another namespace is not counted; with one shard the query
    gives what the max() by group of one stream always gave."""
    (rule,) = [r for r in _adapter_rules() if r["name"]["as"] == "acme_stream_lag_entries"]
    query = _adapter_query(rule)
    one_shard_before = (
        f'max(acme_stream_lag_entries{{namespace="acme",group="{NOTIFIER_GROUP}"}}) by (group)'
    )
    group = f'{{group="{NOTIFIER_GROUP}"}}'

    def case(series: list[Obj], value: float, *exprs: str) -> Obj:
        """promtool's test group: each expression must give the one sample {group} = value."""
        sample = {"labels": group, "value": value}
        return {
            "interval": "1m",
            "input_series": series,
            "promql_expr_test": [
                {"expr": expr, "eval_time": "5m", "exp_samples": [sample]}
                for expr in exprs or (query,)
            ],
        }

    # Mid-rollout: two pods read 8 shards, a third (its settings not yet updated) only 4.
    first_four = dict(list(_EIGHT.items())[:4])
    rollout = _lag_series(2, _EIGHT) + [
        {**s, "series": s["series"].replace("acme-notifier-0", "acme-notifier-new")}
        for s in _lag_series(1, first_four)
    ]
    tests = [
        case(_lag_series(3, {"{acme}:events": 7000.0}), 7000.0, query, one_shard_before),
        case(_lag_series(3, _EIGHT) + _lag_series(2, _EIGHT, "acme-dev"), 36000.0),
        case(rollout, 36000.0),
        case(
            _lag_series(4, {name: (9000.0 if i == 0 else 0.0) for i, name in enumerate(_EIGHT)}),
            9000.0,
        ),
    ]
    spec = tmp_path / "adapter-test.yaml"
    spec.write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m", "tests": tests}))
    out = subprocess.run(
        [promtool, "test", "rules", str(spec)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_hpa_external_metrics_are_served_by_adapter_rules(rendered: dict[str, list[Obj]]) -> None:
    """The notifier HPA asks for metrics the adapter rules expose, selecting the real group."""
    exposed = {rule["name"]["as"] for rule in _adapter_rules()}
    hpa = named(rendered["prod"], "HorizontalPodAutoscaler", "acme-notifier")
    metrics = [m["external"]["metric"] for m in hpa["spec"]["metrics"] if m["type"] == "External"]
    assert {m["name"] for m in metrics} <= exposed
    (lag,) = [m for m in metrics if m["name"] == "acme_stream_lag_entries"]
    assert lag["selector"]["matchLabels"] == {"group": NOTIFIER_GROUP}


@pytest.mark.parametrize("shard_count", [1, 3])
def test_lag_gauge_carries_the_labels_the_hpa_selects(
    monkeypatch: pytest.MonkeyPatch, shard_count: int
) -> None:
    """The real stream probe exports acme_stream_lag_entries{stream, group="notifier"}: one
    series per shard it reads, labelled with that shard's events stream (the adapter sums them)."""

    async def measured(_redis: Any, *args: Any, **kwargs: Any) -> probe.StreamState:
        # Whichever way the probe passes the shard (positionally or by keyword), it is the
        # argument with an events stream; none: the one-shard probe of before.
        on = next((a for a in (*args, *kwargs.values()) if hasattr(a, "events")), None)
        index = 0 if on is None else int(on.index)
        return probe.StreamState(
            length=10.0,
            dead=0.0,
            lag=7.0 + index,
            lag_capped=0.0,
            pending=3.0,
            oldest_pending_age_s=1.5,
            oldest_unread_age_s=2.5,
        )

    monkeypatch.setattr(probe, "measure_stream", measured)
    metrics = NotifyMetrics()
    no_redis: Any = None  # measure_stream is replaced: Redis is never touched
    if shard_count == 1:
        stream_probe = probe.StreamProbe(no_redis, metrics, interval_s=1.0)
    else:
        stream_probe = probe.StreamProbe(
            no_redis, metrics, interval_s=1.0, shards=channels.shards(shard_count)
        )
    asyncio.run(stream_probe._probe())
    exposition = generate_latest(metrics.registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
    }
    lags = {
        dict(labels)["stream"]: value
        for (name, labels), value in samples.items()
        if name == "acme_stream_lag_entries" and dict(labels).get("group") == NOTIFIER_GROUP
    }
    # Shard 0 keeps the one-shard name; shard i is {acme:i}:events (the rule, spelled out).
    expected = {"{acme}:events": 7.0, "{acme:1}:events": 8.0, "{acme:2}:events": 9.0}
    assert lags == dict(list(expected.items())[:shard_count])
    labels = (("group", NOTIFIER_GROUP), ("stream", EVENTS_STREAM))
    assert samples[("acme_stream_lag_entries", labels)] == 7.0
    assert samples[("acme_stream_oldest_unread_age_seconds", labels)] == 2.5


def test_observability_bundle_ships_the_dashboard_for_grafanas_sidecar(
    observability: list[Obj],
) -> None:
    """The dashboard ConfigMap carries the JSON verbatim and the grafana_dashboard label."""
    config_map = named(observability, "ConfigMap", "acme-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["grafana-dashboard.json"]) == _dashboard()
