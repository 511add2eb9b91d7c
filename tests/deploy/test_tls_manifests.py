"""The production overlays reach every server over verified TLS: each pod mounts the CA (and
its optional client certificate) that the URLs of its Secret name, and those URLs ask for the
certificate to be checked (k8s/components/tls; docs/security.md, "TLS to every server")."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import pytest

from acme_runtime.env import POSTGRES_SCHEMES
from tests.deploy.manifests import (
    AUTOSCALED_OVERLAYS,
    Obj,
    container_env,
    containers,
    example_secrets,
    pod_spec,
    workloads,
)

CA_FILE = "/etc/acme/tls/ca.crt"
#: The URL parameters that name a file the client library opens, per scheme.
FILE_PARAMS = {
    "rediss": ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"),
    "rediss+cluster": ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"),
    "postgresql": ("sslrootcert", "sslcert", "sslkey"),
    "postgres": ("sslrootcert", "sslcert", "sslkey"),
    "smtp": ("cafile",),
    "smtps": ("cafile",),
}
URL_VARS = ("ACME_DATABASE_URL", "ACME_REDIS_URL", "ACME_SMTP_URL", "ACME_SMTP_FALLBACK_URL")


def _mounted_files(workload: Obj, container: Obj) -> dict[str, int]:
    """Path -> mode of every file a projected volume puts into the container (read-only)."""
    volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
    files: dict[str, int] = {}
    for mount in container.get("volumeMounts", []):
        projected = volumes[mount["name"]].get("projected")
        if projected is None:
            continue
        assert mount["readOnly"] is True, mount
        for source in projected["sources"]:
            (content,) = source.values()
            for item in content["items"]:
                files[f"{mount['mountPath']}/{item['path']}"] = projected["defaultMode"]
    return files


def _verified(url: str) -> bool:
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query))
    if parts.scheme in POSTGRES_SCHEMES:
        return params.get("sslmode") == "verify-full" and "sslrootcert" in params
    if parts.scheme in ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster"):
        tls = parts.scheme in ("rediss", "rediss+cluster")
        return tls and params.get("ssl_cert_reqs", "required") == "required"
    tls = parts.scheme == "smtps" or params.get("starttls") == "true"
    return tls and params.get("verify", "true") == "true"


@pytest.mark.parametrize("overlay", AUTOSCALED_OVERLAYS)
def test_every_url_asks_for_verified_tls_with_files_the_pod_mounts(
    rendered: dict[str, list[Obj]], overlay: str
) -> None:
    """verify-full, rediss:// and STARTTLS/SMTPS with checks on; each CA or client certificate
    a URL names is a file the pod mounts read-only, readable by its group alone (0440);
    prod-cluster's `rediss+cluster://` URLs likewise."""
    objs = rendered[overlay]
    checked = 0
    schemes = set()
    for workload in workloads(objs):
        name = workload["metadata"]["name"]
        (container,) = containers(workload)
        env = container_env(objs, container, example_secrets(overlay))
        files = _mounted_files(workload, container)
        assert CA_FILE in files, name
        assert set(files.values()) == {0o440}, name
        for var in URL_VARS:
            if var not in env:
                continue
            url = env[var]
            assert _verified(url), f"{name} {var}: {url}"
            parts = urlsplit(url)
            params = dict(parse_qsl(parts.query))
            named = [params[key] for key in FILE_PARAMS.get(parts.scheme, ()) if key in params]
            assert set(named) <= set(files), f"{name} {var}: {named} not mounted"
            schemes.add(parts.scheme)
            checked += 1
    assert checked >= 7  # api, relay: 2 each; notifier: 4; migrate: 1
    assert ("rediss+cluster" in schemes) == (overlay == "prod-cluster"), schemes
