"""Rendered kustomizations, once per session: every deployment test reads the same objects."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import K8S, OVERLAYS, Obj, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Obj]]:
    """Overlay name -> its objects, as `kubectl kustomize k8s/overlays/<name>` renders them."""
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS}


@pytest.fixture(scope="session")
def observability() -> list[Obj]:
    """The objects of k8s/observability (PodMonitor, PrometheusRule, dashboard ConfigMap)."""
    return render(K8S / "observability")
