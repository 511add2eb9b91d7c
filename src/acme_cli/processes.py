"""Local child processes: start them, watch them, restart a crashed one, stop them in order.

The one supervisor of the processes a developer's machine runs for us: `acme up` uses it for
the SMTP sink, the API, the relay and the notifiers; the benchmarks' `Stack` (bench/stack.py)
and, through it, the chaos harness use it for theirs. The embedded PostgreSQL and Redis are
not children of this module: acme_cli/embedded.py runs those servers.

Every child appends its output to its own log file, runs in a session of its own (a
terminal's Ctrl-C reaches only us, so we decide the order things stop in) and is tied to this
process with PR_SET_PDEATHSIG, so even `kill -9` of the parent leaves no orphan. That tie is
to the *thread* that forks, so call `spawn` and `restart_dead` from the main thread.
"""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from acme_cli.embedded import child_preexec, log_tail

__all__ = [
    "SINK_PREFIXES",
    "Child",
    "ProcessSupervisor",
    "acme_argv",
    "http_ready",
    "log_tail",
    "port_free",
    "tcp_open",
]

#: Children whose names start with these are SMTP sinks: stopped last, so the services'
#: in-flight e-mails still have somewhere to go while they drain.
SINK_PREFIXES: Final = ("smtp-sink", "sink")
_STOP_GRACE_S: Final = 20.0
_FIRST_BACKOFF_S: Final = 0.5
_MAX_BACKOFF_S: Final = 30.0
_PROBE_TIMEOUT_S: Final = 1.0


def acme_argv(*args: str) -> list[str]:
    """The command line of `acme <args>` with this interpreter."""
    return [sys.executable, "-m", "acme_cli.main", *args]


@dataclass(eq=False)
class Child:
    """One child process and how to run it again; `process` is its current incarnation."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    #: Answers True once the child serves (a readiness probe); None: ready once started.
    ready: Callable[[], bool] | None = None
    process: subprocess.Popen[bytes] = field(init=False)
    restarts: int = 0
    backoff_s: float = _FIRST_BACKOFF_S
    #: When a crashed child is due to start again (time.monotonic()), None while it runs.
    restart_at: float | None = None

    def start(self) -> None:
        # The child keeps its own copy of the log's descriptor: ours is closed right away.
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter or a server binary
                self.argv,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=child_preexec(),
                start_new_session=True,
            )

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def is_ready(self) -> bool:
        return self.alive and (self.ready is None or self.ready())


@dataclass
class ProcessSupervisor:
    """The children of this process, each with its log in `logs_dir`."""

    logs_dir: Path
    grace_s: float = _STOP_GRACE_S
    children: list[Child] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        ready: Callable[[], bool] | None = None,
    ) -> Child:
        """Start `argv` as `name`, its output appended to `<logs_dir>/<name>.log`."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        child = Child(name, argv, env, self.logs_dir / f"{name}.log", ready)
        child.start()
        self.children.append(child)
        return child

    def dead(self) -> list[Child]:
        return [c for c in self.children if not c.alive]

    def unready(self) -> list[Child]:
        """The children that do not answer their readiness check (yet)."""
        return [c for c in self.children if not c.is_ready()]

    def restart_dead(self) -> list[Child]:
        """Restart each crashed child once its backoff (doubling, at most 30 s) has passed.

        Call it periodically; it returns the children it has just found dead (their exit code
        in `process.returncode`, their restart `backoff_s` from now), for the caller to say so.
        """
        now = time.monotonic()
        found = []
        for child in self.dead():
            if child.restart_at is None:
                child.restart_at = now + child.backoff_s
                found.append(child)
            elif now >= child.restart_at:
                child.start()
                child.restarts += 1
                child.restart_at = None
                child.backoff_s = min(child.backoff_s * 2, _MAX_BACKOFF_S)
        return found

    def stop(self) -> None:
        """SIGTERM the services and wait up to `grace_s` for them to drain, then the sinks the
        same way; whoever is still running after its grace gets SIGKILL."""
        sinks = [c for c in self.children if c.name.startswith(SINK_PREFIXES)]
        services = [c for c in self.children if c not in sinks]
        for group in (services, sinks):
            for child in group:
                if child.alive:
                    child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.grace_s
            for child in group:
                try:
                    child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()


# --- readiness probes ---------------------------------------------------------------------


def http_ready(host: str, port: int, path: str = "/health/ready") -> bool:
    """Does `GET http://host:port/path` answer 200? (http.client: no proxy from the env.)"""
    connection = http.client.HTTPConnection(host, port, timeout=_PROBE_TIMEOUT_S)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def tcp_open(host: str, port: int) -> bool:
    """Does something accept TCP connections on host:port?"""
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    """Could a server bind host:port now? Asked as asyncio's servers bind (SO_REUSEADDR), so a
    port that only holds connections in TIME_WAIT from the last run counts as free."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
