"""`acme up`: the whole system on one machine, for a newcomer, with nothing but Python.

Starts (unless the matching ACME_*_URL is set) an embedded PostgreSQL, Redis and SMTP sink under
the data folder, applies migrations, creates an API key with both scopes for this run (printed
in the banner: development mode), then runs the API, the relay and the notifier replicas as
child processes of this one (acme_cli/processes.py). Says the system is running only once every
child answers its readiness check. Ctrl-C or SIGTERM stops the children first (so in-flight
e-mails finish), then the servers. Every child is tied to this process (PR_SET_PDEATHSIG), so
even `kill -9` of `acme up` leaves no orphans. A child that dies is restarted with backoff.
Data (orders, the stream, the mail folder) survives a restart.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

from acme_cli.embedded import EmbeddedPostgres, EmbeddedRedis, free_port
from acme_cli.migrations import migrate
from acme_cli.processes import ProcessSupervisor, acme_argv, http_ready, port_free, tcp_open
from acme_orders.api_keys import issue_key
from acme_runtime.env import EnvReader, redact_url

__all__ = ["run_up"]

_POLL_S: Final = 0.2
#: After this long without every child ready, say which ones we are still waiting for.
_SLOW_START_S: Final = 30.0
_LOOPBACK: Final = "127.0.0.1"
_HIGHEST_PORT: Final = 65535


@dataclass(frozen=True)
class _Config:
    """What to run where, from the command line and the environment."""

    root: Path
    notifiers: int
    database_url: str | None
    redis_url: str | None
    smtp_url: str | None
    http_host: str
    http_port: int
    #: Where the relay and notifiers bind their metrics listener; "" when unset, which means
    #: what their default (every interface) means to bind().
    metrics_host: str
    #: The relay's metrics port; the notifiers' and then the API's are the ones after it.
    metrics_port: int

    @classmethod
    def from_env(cls, data_dir: str | None, notifiers: int) -> _Config:
        env = EnvReader()
        return cls(
            root=Path(data_dir or env.string("ACME_DATA_DIR", ".acme")).resolve(),
            notifiers=notifiers if _notifier_available() else 0,
            database_url=env.optional_url("ACME_DATABASE_URL", ("postgresql", "postgres")),
            redis_url=env.optional_url("ACME_REDIS_URL", ("redis", "rediss", "unix")),
            smtp_url=env.optional_url("ACME_SMTP_URL", ("smtp", "smtps")),
            http_host=env.string("ACME_HTTP_HOST", _LOOPBACK),
            http_port=env.integer("ACME_HTTP_PORT", 8000, maximum=_HIGHEST_PORT),
            metrics_host=env.raw("ACME_METRICS_HOST") or "",
            metrics_port=env.integer("ACME_METRICS_PORT", 9100, maximum=_HIGHEST_PORT),
        )


@dataclass
class _Running:
    """What `acme up` started, for the banner."""

    database_url: str
    redis_url: str
    smtp_url: str
    #: The metrics port of the relay, of each notifier and of the API, by child name.
    metrics_ports: dict[str, int]
    #: A key with both scopes, created at start, for the person at the terminal.
    api_key: str


class _StopRequest:
    """Set by SIGINT/SIGTERM; the main loop looks at it every _POLL_S."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGINT, self._handle)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, _signum: int, _frame: object) -> None:
        self.requested = True


def _say(text: str) -> None:
    print(text, flush=True)


def run_up(*, data_dir: str | None, notifiers: int) -> int:
    config = _Config.from_env(data_dir, notifiers)
    config.root.mkdir(parents=True, exist_ok=True)
    stop = _StopRequest()
    servers: list[EmbeddedPostgres | EmbeddedRedis] = []
    supervisor = ProcessSupervisor(config.root / "logs")
    try:
        running = _start(config, servers, supervisor)
        _supervise(supervisor, stop, announce=lambda: _banner(config, running, supervisor))
        _say("\nstopping: letting in-flight work finish ...")
        return 0
    finally:
        supervisor.stop()
        for server in reversed(servers):
            server.stop()
        _say("stopped.")


def _start(
    config: _Config, servers: list[EmbeddedPostgres | EmbeddedRedis], supervisor: ProcessSupervisor
) -> _Running:
    """The servers (embedded unless configured), the migrations, then every service."""
    database_url = config.database_url
    if database_url is None:
        _say("starting embedded PostgreSQL ...")
        servers.append(postgres := EmbeddedPostgres(config.root / "postgres"))
        database_url = postgres.start()
    redis_url = config.redis_url
    if redis_url is None:
        _say("starting embedded Redis ...")
        servers.append(redis_server := EmbeddedRedis(config.root / "redis", appendonly=True))
        redis_url = redis_server.start()
    env = {
        **os.environ,
        "ACME_DATABASE_URL": database_url,
        "ACME_REDIS_URL": redis_url,
        "ACME_LOG_FORMAT": os.environ.get("ACME_LOG_FORMAT", "console"),
    }
    smtp_url = config.smtp_url or _start_sink(supervisor, env, config.root / "mail")
    env["ACME_SMTP_URL"] = smtp_url
    applied = asyncio.run(migrate(database_url))
    _say(f"migrations: {', '.join(applied) if applied else 'schema is current'}")
    # A new key per run: the secret of an earlier one is not kept anywhere to show again.
    name = f"acme up {time.strftime('%Y-%m-%d %H:%M')}"
    api_key = asyncio.run(issue_key(database_url, name=name, operator="acme up"))
    metrics_ports = _start_services(config, supervisor, env)
    return _Running(database_url, redis_url, smtp_url, metrics_ports, api_key)


def _start_sink(supervisor: ProcessSupervisor, env: dict[str, str], mail_dir: Path) -> str:
    port = free_port()
    argv = acme_argv("smtp-sink", "--mail-dir", str(mail_dir), "--port", str(port))
    supervisor.spawn("smtp-sink", argv, env, ready=partial(tcp_open, _LOOPBACK, port))
    return f"smtp://{_LOOPBACK}:{port}"


def _start_services(
    config: _Config, supervisor: ProcessSupervisor, env: dict[str, str]
) -> dict[str, int]:
    """The API, the relay and the notifiers, each with its readiness check; their metrics
    ports by name (the API's comes last: the relay keeps the configured port)."""
    workers = {"relay": ("relay", env)}
    for index in range(1, config.notifiers + 1):
        name = f"notifier-{index}"
        workers[name] = ("notifier", {**env, "ACME_CONSUMER_NAME": name})
    ports = _metrics_ports(config, [*workers, "api"])
    api_ready = partial(http_ready, _probe_host(config.http_host), config.http_port)
    api_env = {**env, "ACME_METRICS_PORT": str(ports["api"])}
    supervisor.spawn("api", acme_argv("api"), api_env, ready=api_ready)
    for name, (command, worker_env) in workers.items():
        port = ports[name]
        # Without a metrics listener (port 0) there is nothing to ask: running is ready.
        ready = partial(http_ready, _probe_host(config.metrics_host), port) if port else None
        supervisor.spawn(
            name, acme_argv(command), {**worker_env, "ACME_METRICS_PORT": str(port)}, ready=ready
        )
    return ports


def _metrics_ports(config: _Config, names: list[str]) -> dict[str, int]:
    """The configured port for the first name and the ones after it for the others, except
    that a port something else listens on (9100 is node_exporter's default) is replaced by a
    free one, and said so: the worker would otherwise fail to bind it and restart forever.
    Port 0 turns the listeners off, for every worker."""
    if config.metrics_port == 0:
        return dict.fromkeys(names, 0)
    ports: dict[str, int] = {}
    for offset, name in enumerate(names):
        wanted = config.metrics_port + offset
        if (
            wanted <= _HIGHEST_PORT
            and wanted not in (config.http_port, *ports.values())
            and port_free(config.metrics_host, wanted)
        ):
            ports[name] = wanted
            continue
        ports[name] = free_port(config.metrics_host)
        _say(f"port {wanted} is in use: {name} serves its metrics on port {ports[name]}")
    return ports


def _supervise(
    supervisor: ProcessSupervisor, stop: _StopRequest, announce: Callable[[], None]
) -> None:
    """Until Ctrl-C or SIGTERM: restart crashed children; `announce` once all are ready."""
    started = time.monotonic()
    announced = hinted = False
    while not stop.requested:
        for child in supervisor.restart_dead():
            _say(
                f"{child.name} exited with {child.process.returncode}; restarting in "
                f"{child.backoff_s:.1f}s (see its log)"
            )
        if not announced:
            waiting = supervisor.unready()
            if not waiting:
                announce()
                announced = True
            elif not hinted and time.monotonic() - started > _SLOW_START_S:
                names = ", ".join(c.name for c in waiting)
                _say(f"still waiting for {names} to be ready (logs: {supervisor.logs_dir})")
                hinted = True
        time.sleep(_POLL_S)


def _notifier_available() -> bool:
    return importlib.util.find_spec("acme_notify.worker") is not None


def _probe_host(host: str) -> str:
    """Where to reach a listener bound to `host` from this machine."""
    return _LOOPBACK if host in ("", "0.0.0.0") else host  # noqa: S104 - compared, not bound


def _metrics_lines(config: _Config, ports: dict[str, int]) -> str:
    if not ports["relay"]:
        return "off (ACME_METRICS_PORT=0)"
    relay = f"http://{_probe_host(config.metrics_host)}:{ports['relay']}/metrics (relay),"
    others = ", ".join(f"{name} on port {port}" for name, port in ports.items() if name != "relay")
    return f"{relay}\n               {others}"


def _banner(config: _Config, running: _Running, supervisor: ProcessSupervisor) -> None:
    base = f"http://{config.http_host}:{config.http_port}"
    names = ", ".join(c.name for c in supervisor.children)
    metrics = _metrics_lines(config, running.metrics_ports)
    _say(f"""
AcME Orders is running ({names})
  API          {base}
  OpenAPI      {base}/schema  (JSON: {base}/schema/openapi.json)
  API key      {running.api_key}
               (orders:write + orders:read, made for this run; more: acme keys create)
  metrics      {metrics}
  PostgreSQL   {redact_url(running.database_url)}
  Redis        {redact_url(running.redis_url)}
  SMTP         {redact_url(running.smtp_url)}
  mail folder  {config.root / "mail"}
  logs         {supervisor.logs_dir}

Place an order:
  curl -si {base}/orders -H 'Authorization: Bearer {running.api_key}' \\
    -H 'content-type: application/json' -H 'Idempotency-Key: demo-1' \\
    -d '{{"customer": {{"name": "Ana Souza", "email": "ana@example.com", "locale": "pt-BR"}},
         "items": [{{"sku": "CANECA-01", "name": "Caneca", "quantity": 2, "unit_price": "19.90"}}],
         "currency": "BRL"}}'

Ctrl-C stops everything.
""")
