"""Rendered kustomizations, once per session: every deployment test reads the same objects."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

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


#: Where promtool is unpacked from Debian's `prometheus` package when it is not on PATH.
_TOOLS = Path(tempfile.gettempdir()) / "acme-test-tools"


def _promtool_from_debian() -> Path:
    """promtool (a static binary) unpacked from Debian's package: downloaded, never installed,
    so no Prometheus service is configured or started on the machine."""
    target = _TOOLS / "promtool"
    if target.exists():
        return target
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise RuntimeError("neither promtool nor apt-get/dpkg-deb to fetch it is available")
    with tempfile.TemporaryDirectory(prefix="acme-promtool-") as work:

        def download() -> subprocess.CompletedProcess[str]:
            # _apt cannot write into our folder; apt downloads as the calling user (harmless).
            return subprocess.run(
                ["apt-get", "download", "prometheus"],
                cwd=work,
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )

        fetched = download()
        if fetched.returncode != 0 and os.geteuid() == 0:
            # A fresh machine may have no package lists yet.
            subprocess.run(["apt-get", "update"], capture_output=True, timeout=300, check=False)
            fetched = download()
        debs = list(Path(work).glob("prometheus_*.deb"))
        if fetched.returncode != 0 or not debs:
            raise RuntimeError(f"apt-get download prometheus failed: {fetched.stderr.strip()}")
        subprocess.run(
            ["dpkg-deb", "-x", str(debs[0]), str(Path(work) / "x")], check=True, timeout=120
        )
        _TOOLS.mkdir(parents=True, exist_ok=True)
        staged = _TOOLS / f"promtool.{os.getpid()}"
        shutil.copy2(Path(work) / "x" / "usr" / "bin" / "promtool", staged)
        os.replace(staged, target)  # atomic: concurrent sessions never see half a file
    return target


@pytest.fixture(scope="session")
def promtool() -> str:
    """promtool from PATH, or unpacked from Debian's package; skipped only outside CI."""
    found = shutil.which("promtool")
    if found:
        return found
    try:
        return str(_promtool_from_debian())
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must check the alert rules with promtool: {exc}")
        pytest.skip(f"promtool unavailable ({exc}); install Debian's prometheus package")
