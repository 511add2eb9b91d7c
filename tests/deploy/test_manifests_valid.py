"""Every overlay renders, every object is valid Kubernetes, every file passes yamllint.

Built-in kinds are validated by kubernetes-validate in strict mode (unknown fields rejected)
against the oldest and a current Kubernetes release the manifests promise to run on. Custom
resources (KEDA, Prometheus Operator), which have no schema there, get structural checks of the
fields this project uses.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from kubernetes_validate import utils as kv
from yamllint import config as yamllint_config
from yamllint import linter

from acme_runtime.channels import EVENTS_STREAM, NOTIFIER_GROUP
from tests.deploy.manifests import (
    K8S,
    OVERLAYS,
    ROOT,
    Obj,
    config_map_data,
    containers,
    example_secrets,
    named,
    of_kind,
    pod_labels,
    render,
    selects,
    shard_events_stream,
    shards_read,
)

#: The oldest Kubernetes the manifests support (matchLabelKeys, unhealthyPodEvictionPolicy) and
#: a current one.
K8S_VERSIONS = ("1.29.0", "1.33.0")
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def _validate(obj: Obj, version: str) -> None:
    kv.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_builtin_object_validates_strictly(
    rendered: dict[str, list[Obj]], overlay: str, version: str
) -> None:
    """Each built-in object of an overlay matches the Kubernetes schema, no unknown fields."""
    errors = []
    checked = 0
    for obj in rendered[overlay]:
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        try:
            _validate(obj, version)
            checked += 1
        except kv.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
        except kv.SchemaNotFoundError:
            errors.append(
                f"{obj['kind']} ({obj['apiVersion']}) has no schema in Kubernetes {version}"
            )
    assert not errors, "\n".join(errors)
    assert checked >= 20


def test_strict_validation_rejects_an_unknown_field(rendered: dict[str, list[Obj]]) -> None:
    """The validator is really strict: a misspelt probe field fails (guards the test above)."""
    deployment = named(rendered["prod"], "Deployment", "acme-notifier")
    broken: dict[str, Any] = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSecond"] = 5
    with pytest.raises(kv.ValidationError):
        _validate(broken, K8S_VERSIONS[-1])


def test_no_overlay_renders_an_unknown_custom_kind(rendered: dict[str, list[Obj]]) -> None:
    """Every object is either a built-in kind or one of the custom kinds checked structurally."""
    for objs in rendered.values():
        for obj in objs:
            api_group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
            if "." in api_group and not api_group.endswith("k8s.io"):
                assert (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS, obj["kind"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_namespaced_object_lands_in_the_overlay_namespace(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """One namespace per overlay, the one its Namespace object creates (components included)."""
    objs = rendered[overlay]
    (namespace,) = of_kind(objs, "Namespace")
    expected = namespace["metadata"]["name"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == expected, obj["metadata"]["name"]


def test_base_and_observability_render_on_their_own(observability: list[Obj]) -> None:
    """k8s/base and k8s/observability are valid kustomizations by themselves."""
    assert {o["kind"] for o in render(K8S / "base")} >= {"Deployment", "Job", "Service"}
    assert {o["kind"] for o in observability} == {
        "PodMonitor",
        "PrometheusRule",
        "ConfigMap",
    }


# ---- custom resources: structural checks -------------------------------------------------------

SCALED_OBJECT_SPEC_KEYS = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
TRIGGER_KEYS = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
REDIS_STREAMS_KEYS = {
    "address",
    "host",
    "port",
    "addressFromEnv",
    "hostFromEnv",
    "portFromEnv",
    "usernameFromEnv",
    "passwordFromEnv",
    "stream",
    "consumerGroup",
    "pendingEntriesCount",
    "streamLength",
    "lagCount",
    "activationLagCount",
    "enableTLS",
    "unsafeSsl",
    "databaseIndex",
}


def test_keda_scaled_object_is_well_formed(rendered: dict[str, list[Obj]]) -> None:
    """The ScaledObject uses only documented fields, string metadata, and the real stream/group."""
    objs = rendered["prod-keda"]
    (scaled,) = of_kind(objs, "ScaledObject")
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC_KEYS
    assert named(objs, "Deployment", spec["scaleTargetRef"]["name"])
    (trigger,) = spec["triggers"]
    assert set(trigger) <= TRIGGER_KEYS
    assert trigger["type"] == "redis-streams"
    metadata = trigger["metadata"]
    assert set(metadata) <= REDIS_STREAMS_KEYS
    # KEDA's trigger metadata is map[string]string: an unquoted number is rejected by the API.
    assert all(isinstance(value, str) for value in metadata.values())
    assert metadata["stream"] == EVENTS_STREAM
    assert metadata["consumerGroup"] == NOTIFIER_GROUP
    assert "lagCount" in metadata and "pendingEntriesCount" not in metadata
    assert re.fullmatch(r"[a-z0-9.-]+:\d+", metadata["address"])
    assert ".invalid:" not in metadata["address"], "the overlay must set the real Redis address"
    auth = named(objs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    secrets = example_secrets()
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["parameter"] in {"username", "password"}
        # KEDA's own read-only Redis user, not a workload's credential.
        assert ref["name"] == "acme-scaler"
        assert ref["key"] in secrets[ref["name"]]
    assert spec["minReplicaCount"] >= 2
    assert spec["fallback"]["replicas"] >= spec["minReplicaCount"]


REDIS_CLUSTER_STREAMS_KEYS = {
    "addresses",
    "hosts",
    "ports",
    "usernameFromEnv",
    "passwordFromEnv",
    "stream",
    "consumerGroup",
    "pendingEntriesCount",
    "streamLength",
    "lagCount",
    "activationLagCount",
    "enableTLS",
    "unsafeSsl",
}
SCALING_MODIFIERS_KEYS = {"formula", "target", "activationTarget", "metricType"}
FALLBACK_BEHAVIORS = {
    "static",
    "currentReplicas",
    "currentReplicasIfHigher",
    "currentReplicasIfLower",
}
#: Names KEDA's formula language (expr) accepts as variables; fixed width, so that no trigger's
#: name is a prefix of another's (older KEDA pairs metrics with trigger names by prefix).
_SHARD_TRIGGER = re.compile(r"shard_\d{3}")


def _cluster_scaled_object(objs: list[Obj]) -> Obj:
    (scaled,) = of_kind(objs, "ScaledObject")
    return scaled


def test_keda_cluster_scaled_object_is_well_formed(rendered: dict[str, list[Obj]]) -> None:
    """prod-cluster's ScaledObject: redis-cluster-streams triggers with documented string
    metadata, the real group, the overlay's seed nodes, KEDA's read-only user; a formula over
    named triggers against an AverageValue target, so that the fallback applies to it."""
    objs = rendered["prod-cluster"]
    scaled = _cluster_scaled_object(objs)
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC_KEYS
    assert named(objs, "Deployment", spec["scaleTargetRef"]["name"])
    modifiers = spec["advanced"]["scalingModifiers"]
    assert set(modifiers) <= SCALING_MODIFIERS_KEYS
    assert all(isinstance(value, str) for value in modifiers.values())
    assert modifiers["metricType"] == "AverageValue"  # KEDA's fallback needs it on the formula
    target = int(modifiers["target"])  # KEDA parses the target as an integer for the fallback
    assert target > 0
    secrets = example_secrets("prod-cluster")
    addresses = set()
    for trigger in spec["triggers"]:
        assert set(trigger) <= TRIGGER_KEYS
        assert trigger["type"] == "redis-cluster-streams"
        assert _SHARD_TRIGGER.fullmatch(trigger["name"]), trigger["name"]
        metadata = trigger["metadata"]
        assert set(metadata) <= REDIS_CLUSTER_STREAMS_KEYS
        assert all(isinstance(value, str) for value in metadata.values())
        assert metadata["consumerGroup"] == NOTIFIER_GROUP
        assert "lagCount" in metadata and "pendingEntriesCount" not in metadata
        # The formula's target also scales the fallback; older KEDA releases take a trigger's.
        assert int(metadata["lagCount"]) == target
        addresses.add(metadata["addresses"])
        auth = named(objs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        for ref in auth["spec"]["secretTargetRef"]:
            assert ref["parameter"] in {"username", "password"}
            assert ref["name"] == "acme-scaler"
            assert ref["key"] in secrets[ref["name"]]
    (seeds,) = addresses  # one cluster: every trigger has the same seed nodes
    assert re.fullmatch(r"[a-z0-9.-]+:\d+(,[a-z0-9.-]+:\d+)*", seeds), seeds
    assert ".invalid:" not in seeds, "the overlay must set the real seed nodes"
    # The same cluster the workloads' Redis URLs name.
    notifier_url = urlsplit(secrets["acme-notifier"]["redis-url"])
    assert notifier_url.scheme.endswith("+cluster")
    assert notifier_url.netloc.rpartition("@")[2] == seeds
    assert spec["minReplicaCount"] >= 2
    assert spec["fallback"]["replicas"] >= spec["minReplicaCount"]
    assert spec["fallback"].get("behavior", "static") in FALLBACK_BEHAVIORS


def test_keda_cluster_triggers_follow_the_shard_naming_rule(rendered: dict[str, list[Obj]]) -> None:
    """One trigger per shard the notifier reads (ACME_STREAM_SHARDS of the overlay's ConfigMap),
    in order: shard 0 on `{acme}:events`, shard i on `{acme:i}:events`; and the formula is the
    sum of exactly those triggers. A shard left out would not count towards scaling; a shard too
    many names a stream nobody creates (kedacore/keda#7447: the scaler then fails)."""
    objs = rendered["prod-cluster"]
    shards = shards_read(config_map_data(objs))
    assert shards == 8
    triggers = _cluster_scaled_object(objs)["spec"]["triggers"]
    assert [t["metadata"]["stream"] for t in triggers] == [
        shard_events_stream(i) for i in range(shards)
    ]
    # The rule itself, literally (shard_events_stream is spelled after the product's rule).
    assert [t["metadata"]["stream"] for t in triggers[:3]] == [
        "{acme}:events",
        "{acme:1}:events",
        "{acme:2}:events",
    ]
    assert triggers[0]["metadata"]["stream"] == EVENTS_STREAM  # shard 0 keeps today's name
    assert [t["name"] for t in triggers] == [f"shard_{i:03d}" for i in range(shards)]
    formula = _cluster_scaled_object(objs)["spec"]["advanced"]["scalingModifiers"]["formula"]
    terms = [term.strip() for term in formula.split("+")]
    assert sorted(terms) == sorted(t["name"] for t in triggers), formula


@pytest.mark.parametrize("overlay", ["prod-keda", "prod-cluster"])
def test_keda_behavior_is_a_valid_hpa_behavior(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """KEDA copies `advanced...behavior` into its HPA: it must pass the HPA schema strictly."""
    (scaled,) = of_kind(rendered[overlay], "ScaledObject")
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-behavior-check"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "x"},
            "maxReplicas": scaled["spec"]["maxReplicaCount"],
            "behavior": scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"],
        },
    }
    _validate(hpa, K8S_VERSIONS[-1])


def test_pod_monitor_scrapes_the_real_metrics_ports(
    rendered: dict[str, list[Obj]], observability: list[Obj]
) -> None:
    """The PodMonitor selects the three services' pods and names ports those pods declare."""
    (monitor,) = of_kind(observability, "PodMonitor")
    deployments = of_kind(rendered["prod"], "Deployment")
    selected = [d for d in deployments if selects(monitor["spec"]["selector"], pod_labels(d))]
    assert {d["metadata"]["name"] for d in selected} == {"acme-api", "acme-relay", "acme-notifier"}
    endpoint_ports = {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]}
    for deployment in selected:
        ports = {p["name"] for c in containers(deployment) for p in c.get("ports", [])}
        assert ports & endpoint_ports, deployment["metadata"]["name"]
        assert monitor["spec"]["jobLabel"] in pod_labels(deployment)


# ---- files ---------------------------------------------------------------------------------------


def _yaml_files() -> list[Path]:
    return sorted(
        p for p in K8S.rglob("*") if p.suffix in (".yaml", ".yml") or p.name == ".yamllint"
    )


def test_every_yaml_file_passes_yamllint() -> None:
    """yamllint with k8s/.yamllint finds nothing in any YAML file under k8s/."""
    config = yamllint_config.YamlLintConfig(file=str(K8S / ".yamllint"))
    problems = [
        f"{path.relative_to(ROOT)}:{p.line}:{p.column}: {p.desc} ({p.rule})"
        for path in _yaml_files()
        for p in linter.run(path.read_text(encoding="utf-8"), config, str(path))
    ]
    assert len(_yaml_files()) >= 15
    assert not problems, "\n".join(problems)


def test_example_secret_is_not_part_of_any_kustomization() -> None:
    """secret.example.yaml is documentation: no kustomization lists it (no credentials applied)."""
    for kustomization in K8S.rglob("kustomization.yaml"):
        document = yaml.safe_load(kustomization.read_text())
        listed = [*document.get("resources", []), *document.get("components", [])]
        assert not any("secret" in str(item) for item in listed), kustomization


def test_dashboard_is_valid_json_with_unique_panels() -> None:
    """The Grafana dashboard parses, panel ids are unique, every panel fits the 24-column grid."""
    dashboard = json.loads((K8S / "observability" / "grafana-dashboard.json").read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert panel["targets"]


# ---- the image -----------------------------------------------------------------------------------


def _containerfile() -> str:
    return (ROOT / "Containerfile").read_text()


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker/Podman ignore semantics for the simple patterns used here (last match wins)."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        bare = pattern.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, bare) or path.startswith(bare + "/") or bare == "*":
            ignored = not negate
    return ignored


def test_containerfile_is_multi_stage_non_root_with_acme_entrypoint() -> None:
    """Two stages, a numeric non-root USER in the runtime stage, ENTRYPOINT ["acme"]."""
    text = _containerfile()
    stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\w+))?", text, flags=re.MULTILINE)
    assert len(stages) >= 2
    runtime = text[text.rindex("\nFROM ") :]
    (user,) = re.findall(r"^USER\s+(\S+)", runtime, flags=re.MULTILINE)
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    assert re.search(r'^ENTRYPOINT \["acme"\]$', runtime, flags=re.MULTILINE)
    assert "COPY --from=build" in runtime


def test_containerfile_installs_no_dev_extras() -> None:
    """Production installs `acme-orders` alone: never the embedded servers or the test tools."""
    text = _containerfile()
    installs = re.findall(r"pip install[^\n]*", text)
    assert any("acme-orders" in line for line in installs)
    assert "[embedded]" not in text and "[test]" not in text
    assert "embedded" not in " ".join(installs)


def test_containerfile_copies_everything_the_wheel_is_built_from() -> None:
    """Each COPY source exists and survives .containerignore; pyproject's build inputs are in."""
    text = _containerfile()
    patterns = [
        line.strip()
        for line in (ROOT / ".containerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources: set[str] = set()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, flags=re.MULTILINE):
        *items, _dest = line.split()
        sources.update(items)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _ignored(source, patterns), f"{source} is excluded by .containerignore"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {pyproject["project"]["readme"], "pyproject.toml"}
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed.update(p.split("/")[0] for p in wheel["packages"])
    needed.update(wheel.get("force-include", {}))
    assert needed <= sources


def test_dockerignore_matches_containerignore() -> None:
    """Docker and Podman/Buildah see the same build context."""
    assert (ROOT / ".dockerignore").read_text() == (ROOT / ".containerignore").read_text()
