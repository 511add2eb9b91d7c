"""The manifests agree with each other and with the code they deploy.

Selectors select the pods they mean, Services and probes hit ports and routes that exist, every
environment variable is one the code reads and parses, shutdown fits inside the grace period,
autoscaled Deployments leave `replicas` to their autoscaler, every pod is locked down.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from urllib.parse import urlsplit

import pytest

from acme_cli.acl.pg_roles import ROLES
from acme_cli.acl.redis_users import USERS, acl_rules
from acme_notify.settings import NotifySettings
from acme_orders.settings import OrdersSettings
from acme_runtime.metrics_http import ROUTES
from tests.deploy.manifests import (
    AUTOSCALED_OVERLAYS,
    OVERLAYS,
    Obj,
    api_routes,
    code_env_names,
    config_map_data,
    container_env,
    containers,
    example_secrets,
    named,
    of_kind,
    pod_labels,
    pod_spec,
    selects,
    workloads,
)

#: PostgreSQL connections the whole deployment may open at its largest (every autoscaler at its
#: maximum, every pool full); docs/kubernetes.md asks for max_connections >= 200.
POSTGRES_CONNECTION_BUDGET = 180
#: uvicorn's graceful shutdown (acme_cli.main) + the fast-path publisher's drain (acme_orders.app).
API_SHUTDOWN_S = 10 + 5


def _secret() -> dict[str, dict[str, str]]:
    return example_secrets()


def _workload_of(objs: list[Obj], name: str) -> Obj:
    matches = [w for w in workloads(objs) if w["metadata"]["name"] == name]
    assert len(matches) == 1, name
    return matches[0]


def _autoscaled_targets(objs: list[Obj]) -> list[str]:
    targets = [
        h["spec"]["scaleTargetRef"]["name"] for h in of_kind(objs, "HorizontalPodAutoscaler")
    ]
    targets += [s["spec"]["scaleTargetRef"]["name"] for s in of_kind(objs, "ScaledObject")]
    return targets


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_select_their_own_pods_only(rendered: dict[str, list[Obj]], overlay: str) -> None:
    """Each Deployment's selector matches its pod labels and no other workload's pods."""
    objs = rendered[overlay]
    for workload in of_kind(objs, "Deployment"):
        selector = workload["spec"]["selector"]
        assert selects(selector, pod_labels(workload))
        others = [w for w in workloads(objs) if w is not workload]
        assert not any(selects(selector, pod_labels(o)) for o in others), workload["metadata"][
            "name"
        ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_target_existing_container_ports(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """Every Service selects exactly one Deployment's pods and targets a port they declare."""
    objs = rendered[overlay]
    for service in of_kind(objs, "Service"):
        backends = [
            d
            for d in of_kind(objs, "Deployment")
            if selects({"matchLabels": service["spec"]["selector"]}, pod_labels(d))
        ]
        assert len(backends) == 1, service["metadata"]["name"]
        ports = [p for c in containers(backends[0]) for p in c.get("ports", [])]
        for port in service["spec"]["ports"]:
            target = port["targetPort"]
            assert any(target in (p["name"], p["containerPort"]) for p in ports), (
                f"{service['metadata']['name']} -> {target}"
            )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_one_matching_disruption_budget(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """Exactly one PodDisruptionBudget covers each Deployment, allowing one pod down at a time."""
    objs = rendered[overlay]
    for deployment in of_kind(objs, "Deployment"):
        budgets = [
            b
            for b in of_kind(objs, "PodDisruptionBudget")
            if selects(b["spec"]["selector"], pod_labels(deployment))
        ]
        assert len(budgets) == 1, deployment["metadata"]["name"]
        assert budgets[0]["spec"]["maxUnavailable"] == 1


def test_api_probes_hit_real_get_routes_on_the_api_port(rendered: dict[str, list[Obj]]) -> None:
    """Startup/liveness hit /health/live, readiness /health/ready: routes the app serves."""
    routes = api_routes()
    (api,) = containers(named(rendered["prod"], "Deployment", "acme-api"))
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    settings = OrdersSettings.from_env(container_env(rendered["prod"], api, _secret()))
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        probe = api[kind]["httpGet"]
        assert "GET" in routes[probe["path"]], f"{kind}: {probe['path']}"
        assert ports[probe["port"]] == settings.http_port
    assert api["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert api["readinessProbe"]["httpGet"]["path"] == "/health/ready"


@pytest.mark.parametrize("name", ["acme-relay", "acme-notifier"])
def test_worker_probes_hit_the_health_routes_of_the_worker_listener(
    rendered: dict[str, list[Obj]], name: str
) -> None:
    """Relay and notifier probes target ACME_METRICS_PORT, on routes WorkerHttp serves."""
    objs = rendered["prod"]
    (container,) = containers(named(objs, "Deployment", name))
    env = container_env(objs, container, _secret())
    settings = (NotifySettings if name == "acme-notifier" else OrdersSettings).from_env(env)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": settings.metrics_port}
    assert settings.metrics_host == "0.0.0.0"  # noqa: S104 - the kubelet probes the pod IP
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        action = container[kind].get("httpGet") or container[kind]["tcpSocket"]
        assert ports[action["port"]] == settings.metrics_port
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    probed = {container[k]["httpGet"]["path"] for k in ("livenessProbe", "readinessProbe")}
    assert probed <= set(ROUTES)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_env_var_is_one_the_code_reads(rendered: dict[str, list[Obj]], overlay: str) -> None:
    """No typo'd or stale variable: each name in env/envFrom appears in src/ as a literal."""
    known = code_env_names()
    objs = rendered[overlay]
    names = set(config_map_data(objs))
    for workload in workloads(objs):
        for container in containers(workload):
            names.update(var["name"] for var in container.get("env", []))
    assert names, "no environment found"
    assert names <= known, sorted(names - known)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_process_parses_its_environment(rendered: dict[str, list[Obj]], overlay: str) -> None:
    """The settings of every pod load from the rendered env: types, ranges and URL schemes hold
    (prod-cluster: `rediss+cluster://` seed lists and ACME_STREAM_SHARDS=8 included)."""
    objs = rendered[overlay]
    for workload in workloads(objs):
        (container,) = containers(workload)
        env = container_env(objs, container, example_secrets(overlay))
        command = container["args"][0]
        if command in ("api", "relay"):
            settings = OrdersSettings.from_env(env)
            assert settings.http_host == "0.0.0.0"  # noqa: S104 - reachable from the Service
        elif command == "notifier":
            NotifySettings.from_env(env)
        else:
            assert command == "migrate"
            assert set(env) == {"ACME_DATABASE_URL"}


def test_secret_references_name_keys_of_the_example_secret(rendered: dict[str, list[Obj]]) -> None:
    """Every secretKeyRef names its own workload's Secret (acme-api for acme-api, ...) and a
    key that Secret's example documents: no two workloads share a credential."""
    secrets = example_secrets()
    for objs in rendered.values():
        for workload in workloads(objs):
            for container in containers(workload):
                for var in container.get("env", []):
                    ref = var["valueFrom"]["secretKeyRef"]
                    assert ref["name"] == workload["metadata"]["name"], var["name"]
                    assert ref["key"] in secrets[ref["name"]]


def test_each_example_secret_carries_its_own_service_credential() -> None:
    """The example URLs log in as the user and role `acme setup-acl` makes for that workload."""
    expected = {
        "acme-api": ("acme-api", "acme_orders"),
        "acme-relay": ("acme-relay", "acme_orders"),
        "acme-notifier": ("acme-notifier", "acme_notifier"),
        "acme-admin": ("acme-admin", "acme_admin"),
    }
    secrets = example_secrets()
    for name, (redis_user, pg_role) in expected.items():
        # The admin pod's Secret is named as the variables (envFrom), the others as keys.
        redis_key, pg_key = (
            ("ACME_REDIS_URL", "ACME_DATABASE_URL")
            if name == "acme-admin"
            else ("redis-url", "database-url")
        )
        assert urlsplit(secrets[name][redis_key]).username == redis_user, name
        assert urlsplit(secrets[name][pg_key]).username == pg_role, name
    assert secrets["acme-scaler"]["redis-username"] == "acme-scaler"
    assert set(secrets["acme-migrate"]) == {"database-url"}
    assert {u.name for u in USERS} == {*(r for r, _ in expected.values()), "acme-scaler"}
    assert {r.name for r in ROLES} == {p for _, p in expected.values()}


@pytest.mark.parametrize("overlay", ["prod-keda", "prod-cluster"])
def test_the_scalers_redis_user_may_read_every_stream_its_triggers_name(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """KEDA logs in as acme-scaler (`acme setup-acl`): its key patterns cover every stream a
    trigger names, it may run XINFO GROUPS (lagCount), and, on a Redis Cluster, CLUSTER SLOTS
    (go-redis, inside KEDA, loads the slot map with it before its first command)."""
    (scaler,) = [user for user in USERS if user.name == "acme-scaler"]
    triggers = [
        t for s in of_kind(rendered[overlay], "ScaledObject") for t in s["spec"]["triggers"]
    ]
    streams = {t["metadata"]["stream"] for t in triggers}
    assert streams
    denied = {s for s in streams if not any(fnmatchcase(s, key) for key in scaler.keys)}
    assert not denied, sorted(denied)
    cluster = any(t["type"] == "redis-cluster-streams" for t in triggers)
    # What `acme setup-acl` grants it, on a cluster with the cluster client's introspection.
    granted = {rule[1:] for rule in acl_rules(scaler, "x" * 16, cluster=cluster) if rule[0] == "+"}
    needed = {"xinfo|groups", *(["cluster|slots"] if cluster else [])}
    assert needed <= granted, sorted(needed - granted)


def test_notifier_drains_inside_the_grace_period(rendered: dict[str, list[Obj]]) -> None:
    """SMTP timeout < ACME_NOTIFY_GRACE_S < terminationGracePeriodSeconds: no send is killed."""
    for overlay, objs in rendered.items():
        deployment = named(objs, "Deployment", "acme-notifier")
        (container,) = containers(deployment)
        env = container_env(objs, container, example_secrets(overlay))
        settings = NotifySettings.from_env(env)
        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        assert settings.smtp_timeout_s < settings.grace_s < grace
        assert "lifecycle" not in container  # a preStop delay would eat into the drain


def test_api_shuts_down_inside_the_grace_period(rendered: dict[str, list[Obj]]) -> None:
    """preStop sleep + uvicorn's graceful shutdown + the publisher's drain < the grace period."""
    deployment = named(rendered["prod"], "Deployment", "acme-api")
    (container,) = containers(deployment)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert int(command[1]) + API_SHUTDOWN_S < pod_spec(deployment)["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """An autoscaled Deployment has no `replicas` (apply would reset it); others state theirs."""
    objs = rendered[overlay]
    targets = _autoscaled_targets(objs)
    assert len(targets) == len(set(targets)), "two autoscalers on one Deployment fight"
    for deployment in of_kind(objs, "Deployment"):
        name = deployment["metadata"]["name"]
        if name in targets:
            assert "replicas" not in deployment["spec"], name
        else:
            assert deployment["spec"]["replicas"] >= 1, name


@pytest.mark.parametrize("overlay", AUTOSCALED_OVERLAYS)
def test_notifier_has_exactly_one_autoscaler_with_two_replicas_minimum(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """prod uses the prometheus-adapter HPA, prod-keda and prod-cluster a ScaledObject; each
    keeps >= 2 pods."""
    objs = rendered[overlay]
    hpas = [
        h
        for h in of_kind(objs, "HorizontalPodAutoscaler")
        if h["spec"]["scaleTargetRef"]["name"] == "acme-notifier"
    ]
    scaled = [
        s
        for s in of_kind(objs, "ScaledObject")
        if s["spec"]["scaleTargetRef"]["name"] == "acme-notifier"
    ]
    assert len(hpas) + len(scaled) == 1
    minimum = hpas[0]["spec"]["minReplicas"] if hpas else scaled[0]["spec"]["minReplicaCount"]
    assert minimum >= 2


def test_autoscalers_scale_up_fast_and_down_slowly(rendered: dict[str, list[Obj]]) -> None:
    """Every HPA behaviour: no scale-up stabilisation, a scale-down window of at least 5 minutes."""
    behaviours = [
        h["spec"]["behavior"]
        for objs in rendered.values()
        for h in of_kind(objs, "HorizontalPodAutoscaler")
    ]
    behaviours += [
        s["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        for objs in rendered.values()
        for s in of_kind(objs, "ScaledObject")
    ]
    assert len(behaviours) >= 6
    for behaviour in behaviours:
        assert behaviour["scaleUp"]["stabilizationWindowSeconds"] == 0
        assert behaviour["scaleDown"]["stabilizationWindowSeconds"] >= 300


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_locked_down(rendered: dict[str, list[Obj]], overlay: str) -> None:
    """Non-root, seccomp, read-only root, no escalation, no capabilities, no token, bounded."""
    for workload in workloads(rendered[overlay]):
        spec = pod_spec(workload)
        name = workload["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] != 0, name
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for container in containers(workload):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_come_from_a_registry_with_a_fixed_tag(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """The overlay replaced the placeholder image with registry/name:tag, never :latest."""
    for workload in workloads(rendered[overlay]):
        for container in containers(workload):
            image = container["image"]
            assert "/" in image and ":" in image.rsplit("/", 1)[1], image
            assert not image.endswith(":latest"), image


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployments_spread_over_nodes_and_zones(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """Each Deployment spreads its own pods over hostnames and zones."""
    for deployment in of_kind(rendered[overlay], "Deployment"):
        constraints = pod_spec(deployment)["topologySpreadConstraints"]
        keys = {c["topologyKey"] for c in constraints}
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
        for constraint in constraints:
            assert selects(constraint["labelSelector"], pod_labels(deployment))


def test_rollouts_never_go_below_the_current_count(rendered: dict[str, list[Obj]]) -> None:
    """maxUnavailable 0: new pods join before old ones leave (no capacity lost mid-rollout)."""
    for deployment in of_kind(rendered["prod"], "Deployment"):
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def _allowed_ports(objs: list[Obj], labels: dict[str, str], direction: str) -> set[int]:
    ports: set[int] = set()
    for policy in of_kind(objs, "NetworkPolicy"):
        if not selects(policy["spec"]["podSelector"], labels):
            continue
        for rule in policy["spec"].get(direction, []):
            ports.update(p["port"] for p in rule.get("ports", []))
    return ports


def test_network_policies_default_deny_and_open_only_what_each_process_uses(
    rendered: dict[str, list[Obj]],
) -> None:
    """Ingress reaches every declared container port; egress covers exactly each process's peers."""
    objs = rendered["prod"]
    deny = named(objs, "NetworkPolicy", "acme-default-deny")
    assert deny["spec"]["podSelector"] == {}
    assert set(deny["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    dns, postgres, redis, smtp, otlp = {53}, {5432}, {6379}, {25, 465, 587}, {4317, 4318}
    expected_egress = {
        "acme-api": dns | postgres | redis | otlp,
        "acme-relay": dns | postgres | redis | otlp,
        "acme-notifier": dns | postgres | redis | smtp | otlp,
        "acme-migrate": dns | postgres,
    }
    for workload in workloads(objs):
        labels = pod_labels(workload)
        name = workload["metadata"]["name"]
        declared = {p["containerPort"] for c in containers(workload) for p in c.get("ports", [])}
        assert declared <= _allowed_ports(objs, labels, "ingress"), name
        assert _allowed_ports(objs, labels, "egress") == expected_egress[name], name


def test_worst_case_postgres_connections_fit_the_budget(rendered: dict[str, list[Obj]]) -> None:
    """Every autoscaler at its maximum with full pools stays under the connection budget."""
    objs = rendered["prod"]
    config = config_map_data(objs)
    api_max = named(objs, "HorizontalPodAutoscaler", "acme-api")["spec"]["maxReplicas"]
    notifier_max = named(objs, "HorizontalPodAutoscaler", "acme-notifier")["spec"]["maxReplicas"]
    relays = named(objs, "Deployment", "acme-relay")["spec"]["replicas"]
    orders_pool = int(config["ACME_DB_POOL_MAX"])
    notify_pool = int(config["ACME_NOTIFY_DB_POOL_MAX"])
    listen = 1  # each relay also holds one session for LISTEN (docs/capacity.md, Connections)
    migrate = 1
    total = api_max * orders_pool + relays * (orders_pool + listen)
    total += notifier_max * notify_pool + migrate
    assert total <= POSTGRES_CONNECTION_BUDGET, total
