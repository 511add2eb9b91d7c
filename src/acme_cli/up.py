"""`acme up`: the whole system on one machine, for a newcomer, with nothing but Python.

Starts (unless the matching ACME_*_URL is set) an embedded PostgreSQL, Redis and SMTP sink under
the data folder, applies migrations, then runs the API, the relay and the notifier replicas as
child processes of this one. Prints what runs where; Ctrl-C or SIGTERM stops the children first
(so in-flight e-mails finish), then the servers. Every child is tied to this process
(PR_SET_PDEATHSIG), so even `kill -9` of `acme up` leaves no orphans. A child that dies is
restarted with backoff. Data (orders, the stream, the mail folder) survives a restart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from acme_cli.embedded import EmbeddedPostgres, EmbeddedRedis, child_preexec, free_port
from acme_cli.migrations import migrate
from acme_runtime.env import EnvReader, redact_url

__all__ = ["run_up"]

_STOP_GRACE_S = 20.0
_RESTART_MAX_S = 30.0


@dataclass
class _Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: IO[bytes]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    backoff_s: float = field(default=0.5)

    def start(self) -> None:
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=child_preexec(),
            start_new_session=True,
        )

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)


def _say(text: str) -> None:
    print(text, flush=True)


def _acme(*args: str) -> list[str]:
    return [sys.executable, "-m", "acme_cli.main", *args]


def run_up(*, data_dir: str | None, notifiers: int) -> int:
    env = EnvReader()
    root = Path(data_dir or env.string("ACME_DATA_DIR", ".acme")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    database_url = env.optional_url("ACME_DATABASE_URL", ("postgresql", "postgres"))
    redis_url = env.optional_url("ACME_REDIS_URL", ("redis", "rediss", "unix"))
    smtp_url = env.optional_url("ACME_SMTP_URL", ("smtp", "smtps"))
    http_host = env.string("ACME_HTTP_HOST", "127.0.0.1")
    http_port = env.integer("ACME_HTTP_PORT", 8000, maximum=65535)
    metrics_port = env.integer("ACME_METRICS_PORT", 9100, maximum=65535)

    servers: list[EmbeddedPostgres | EmbeddedRedis] = []
    children: list[_Child] = []
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    try:
        if database_url is None:
            _say("starting embedded PostgreSQL ...")
            postgres = EmbeddedPostgres(root / "postgres")
            servers.append(postgres)
            database_url = postgres.start()
        if redis_url is None:
            _say("starting embedded Redis ...")
            redis_server = EmbeddedRedis(root / "redis", appendonly=True)
            servers.append(redis_server)
            redis_url = redis_server.start()
        child_env = {
            **os.environ,
            "ACME_DATABASE_URL": database_url,
            "ACME_REDIS_URL": redis_url,
            "ACME_LOG_FORMAT": os.environ.get("ACME_LOG_FORMAT", "console"),
        }
        mail_dir = root / "mail"
        if smtp_url is None:
            sink_port = free_port()
            smtp_url = f"smtp://127.0.0.1:{sink_port}"
            sink = _Child(
                "smtp-sink",
                _acme("smtp-sink", "--mail-dir", str(mail_dir), "--port", str(sink_port)),
                child_env,
                (logs / "smtp-sink.log").open("ab"),
            )
            children.append(sink)
            sink.start()
        child_env["ACME_SMTP_URL"] = smtp_url
        applied = asyncio.run(migrate(database_url))
        _say(f"migrations: {', '.join(applied) if applied else 'schema is current'}")

        children.append(_Child("api", _acme("api"), child_env, (logs / "api.log").open("ab")))
        relay_env = {**child_env, "ACME_METRICS_PORT": str(metrics_port)}
        children.append(_Child("relay", _acme("relay"), relay_env, (logs / "relay.log").open("ab")))
        if _notifier_available():
            for index in range(notifiers):
                notifier_env = {
                    **child_env,
                    "ACME_CONSUMER_NAME": f"notifier-{index + 1}",
                    "ACME_METRICS_PORT": str(metrics_port + 1 + index),
                }
                children.append(
                    _Child(
                        f"notifier-{index + 1}",
                        _acme("notifier"),
                        notifier_env,
                        (logs / f"notifier-{index + 1}.log").open("ab"),
                    )
                )
        for child in children:
            if child.process is None:
                child.start()
        _banner(
            http_host,
            http_port,
            database_url,
            redis_url,
            smtp_url,
            mail_dir,
            logs,
            children,
            metrics_port,
        )
        while not stopping:
            _restart_dead(children)
            time.sleep(0.2)
        _say("\nstopping: letting in-flight work finish ...")
        return 0
    finally:
        _stop_children(children)
        for server in reversed(servers):
            server.stop()
        for child in children:
            child.log.close()
        _say("stopped.")


def _notifier_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("acme_notify.worker") is not None


def _restart_dead(children: list[_Child]) -> None:
    now = time.monotonic()
    for child in children:
        if child.process is None or child.process.poll() is None:
            continue
        if child.next_start == 0.0:
            code = child.process.returncode
            _say(
                f"{child.name} exited with {code}; restarting in {child.backoff_s:.1f}s "
                f"(see its log)"
            )
            child.next_start = now + child.backoff_s
        elif now >= child.next_start:
            child.start()
            child.restarts += 1
            child.next_start = 0.0
            child.backoff_s = min(child.backoff_s * 2, _RESTART_MAX_S)


def _stop_children(children: list[_Child]) -> None:
    # Services first, the SMTP sink last, so in-flight e-mails still have somewhere to go.
    ordered = [c for c in children if c.name != "smtp-sink"] + [
        c for c in children if c.name == "smtp-sink"
    ]
    for group in (ordered[:-1], ordered[-1:]) if ordered else ():
        for child in group:
            child.stop()
        deadline = time.monotonic() + _STOP_GRACE_S
        for child in group:
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.stop(signal.SIGKILL)
                child.process.wait()


def _banner(
    host: str,
    port: int,
    database_url: str,
    redis_url: str,
    smtp_url: str,
    mail_dir: Path,
    logs: Path,
    children: list[_Child],
    metrics_port: int,
) -> None:
    base = f"http://{host}:{port}"
    names = ", ".join(c.name for c in children)
    _say(f"""
AcME Orders is running ({names})
  API          {base}
  OpenAPI      {base}/schema  (JSON: {base}/schema/openapi.json)
  metrics      {base}/metrics (API), http://127.0.0.1:{metrics_port}/metrics (relay),
               notifiers on the ports after it
  PostgreSQL   {redact_url(database_url)}
  Redis        {redact_url(redis_url)}
  SMTP         {redact_url(smtp_url)}
  mail folder  {mail_dir}
  logs         {logs}

Place an order:
  curl -si {base}/orders -H 'content-type: application/json' -H 'Idempotency-Key: demo-1' \\
    -d '{{"customer": {{"name": "Ana Souza", "email": "ana@example.com", "locale": "pt-BR"}},
         "items": [{{"sku": "CANECA-01", "name": "Caneca", "quantity": 2, "unit_price": "19.90"}}],
         "currency": "BRL"}}'

Ctrl-C stops everything.
""")
