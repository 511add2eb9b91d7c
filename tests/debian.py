"""Installing the Debian packages a test needs, from the test itself, on a machine with apt.

This module owns one thing: `ensure_installed(installed, packages)`, which installs `packages`
with apt-get unless `installed()` says they are there, one installer on the machine at a time, and
never lets a package start its system service (a `policy-rc.d` that answers "no" is in place
for the install when the machine has none). CI runs as root on a fresh Debian machine with the
mirror reachable, so the tests that need Postfix, a TLS-built redis-server or a PostgreSQL
built with SSL install them on first use; elsewhere the caller gets the command to run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

__all__ = ["PackageUnavailableError", "ensure_installed", "install_hint"]

_INSTALL_LOCK = Path("/tmp/acme-test-apt-install.lock")  # noqa: S108 - shared by design
_INSTALL_LOCK_TIMEOUT_S = 900.0
_APT_INSTALL_TIMEOUT_S = 600.0
_APT_UPDATE_TIMEOUT_S = 300.0
# What apt says when its package lists are missing or older than the mirror.
_STALE_LISTS = ("Unable to locate package", "has no installation candidate", "Failed to fetch")
# invoke-rc.d asks this program before starting a service; exit 101 means "not allowed"
# (Debian's invoke-rc.d(8)). Container images usually ship one; a bare machine may not.
_POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
_DENY_SERVICE_STARTS = "#!/bin/sh\n# Written by tests/debian.py while installing.\nexit 101\n"


class PackageUnavailableError(RuntimeError):
    """A package is not installed and could not be installed here; the message says how to."""


def install_hint(packages: Sequence[str], preseed: str = "") -> str:
    """The command that installs `packages` by hand, without starting their services."""
    debconf = f"echo {preseed.strip()!r} | sudo debconf-set-selections && " if preseed else ""
    return (
        f"{debconf}sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y "
        f"--no-install-recommends {' '.join(packages)}"
    )


def _env() -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("MAIL_")},
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C",  # apt's messages are matched on below
        "DEBIAN_FRONTEND": "noninteractive",
    }


def _run(
    args: Sequence[str], *, timeout_s: float, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=_env(),
        check=False,
    )


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    """One installer on the machine at a time: pytest-xdist workers and parallel sessions all
    call ensure_installed(), and dpkg's own lock makes the losers fail, not wait."""
    with _INSTALL_LOCK.open("a") as handle:
        deadline = time.monotonic() + _INSTALL_LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PackageUnavailableError(
                        f"another process held {_INSTALL_LOCK} for {_INSTALL_LOCK_TIMEOUT_S:g} s "
                        "while installing packages"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _no_service_starts() -> Iterator[None]:
    if _POLICY_RC_D.exists():
        yield
        return
    _POLICY_RC_D.write_text(_DENY_SERVICE_STARTS)
    _POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        _POLICY_RC_D.unlink(missing_ok=True)


def _apt_install(packages: Sequence[str]) -> None:
    install = ["apt-get", "install", "-y", "--no-install-recommends",
               # Wait for another apt (unattended-upgrades, a colleague) instead of failing.
               "-o", "DPkg::Lock::Timeout=120", "-o", "Dpkg::Options::=--force-confold",
               *packages]  # fmt: skip
    result = _run(install, timeout_s=_APT_INSTALL_TIMEOUT_S)
    output = result.stdout + result.stderr
    if result.returncode != 0 and any(sign in output for sign in _STALE_LISTS):
        update = _run(["apt-get", "update"], timeout_s=_APT_UPDATE_TIMEOUT_S)
        if update.returncode != 0:
            raise PackageUnavailableError(f"apt-get update failed: {update.stderr.strip()[-2000:]}")
        result = _run(install, timeout_s=_APT_INSTALL_TIMEOUT_S)
    if result.returncode != 0:
        raise PackageUnavailableError(
            f"apt-get install {' '.join(packages)} failed ({result.returncode}): "
            f"{(result.stdout + result.stderr).strip()[-2000:]}"
        )


def ensure_installed(
    installed: Callable[[], bool],
    packages: Sequence[str],
    *,
    preseed: str = "",
    before: Callable[[], None] | None = None,
    after: Callable[[], None] | None = None,
) -> None:
    """Install `packages` unless `installed()` (e.g. a file one of them ships exists): root
    and apt-get only, with no service started; PackageUnavailableError (with the command)
    otherwise.

    `preseed`: debconf answers given first; `before`/`after`: run under the install lock
    around apt-get (e.g. to configure a package's common part before its main one).
    """
    if installed():
        return
    hint = install_hint(packages, preseed)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise PackageUnavailableError(f"{' '.join(packages)} not installed; {hint}")
    with _install_lock():
        if installed():  # another process installed it meanwhile
            return
        if preseed:
            debconf = _run(["debconf-set-selections"], timeout_s=30, stdin=preseed)
            if debconf.returncode != 0:
                raise PackageUnavailableError(
                    f"debconf-set-selections failed: {debconf.stderr.strip()}"
                )
        with _no_service_starts():
            if before is not None:
                before()
            _apt_install(packages)
            if after is not None:
                after()
    if not installed():
        raise PackageUnavailableError(f"installed {' '.join(packages)}, yet not found")
