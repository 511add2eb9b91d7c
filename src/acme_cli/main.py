"""The `acme` command: one entry point, a subcommand per process or operator task.

Settings are read here, once, and handed down. A bad setting or an unreachable dependency ends
the command with one line on stderr naming what is wrong, and a non-zero exit code; never a
traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from acme_runtime.env import SettingsError

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_UNAVAILABLE = 4
EXIT_NOT_FOUND = 5  # the admin commands: an unknown dead-entry or order id


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Runs a worker's main coroutine on uvloop (as uvicorn does for the API) when available."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, except on Windows
        asyncio.run(main)
        return
    uvloop.run(main)


def _cmd_api(_args: argparse.Namespace) -> int:
    import uvicorn

    from acme_orders.app import api_app
    from acme_orders.settings import OrdersSettings

    settings = OrdersSettings.from_env()
    _observe(settings.log_level, settings.log_format, "acme-api")
    config = uvicorn.Config(
        api_app(settings),
        host=settings.http_host,
        port=settings.http_port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_config=None,
        log_level=settings.log_level,
        timeout_graceful_shutdown=10,
        limit_concurrency=settings.http_max_concurrency,
    )
    uvicorn.Server(config).run()
    return EXIT_OK


def _cmd_relay(_args: argparse.Namespace) -> int:
    from acme_orders.app import run_relay
    from acme_orders.settings import OrdersSettings

    settings = OrdersSettings.from_env()
    _observe(settings.log_level, settings.log_format, "acme-relay")
    _run(run_relay(settings))
    return EXIT_OK


def _cmd_notifier(_args: argparse.Namespace) -> int:
    from acme_notify.settings import NotifySettings
    from acme_notify.worker import run_notifier

    settings = NotifySettings.from_env()
    _observe(settings.log_level, settings.log_format, "acme-notifier")
    _run(run_notifier(settings))
    return EXIT_OK


def _observe(log_level: str, log_format: str, service_name: str) -> None:
    """Logging and tracing of one process, configured once from its settings."""
    from acme_runtime.logs import configure_logging
    from acme_runtime.tracing import configure_tracing

    configure_logging(log_level, log_format)
    configure_tracing(service_name, os.environ)


def _cmd_migrate(_args: argparse.Namespace) -> int:
    from acme_cli.migrations import migrate
    from acme_runtime.env import EnvReader

    url = EnvReader().optional_url("ACME_DATABASE_URL", ("postgresql", "postgres"))
    if url is None:
        raise SettingsError("ACME_DATABASE_URL: not set")
    applied = asyncio.run(migrate(url))
    print("applied: " + (", ".join(applied) if applied else "nothing, schema is current"))
    return EXIT_OK


_SETUP_ACL_EPILOG = """environment:
  ACME_REDIS_URL      Redis, as a user that may run ACL SETUSER (skipped when unset)
  ACME_DATABASE_URL   PostgreSQL, as the owner role of `acme migrate`, with CREATEROLE
                      (skipped when unset)
  passwords, each in the variable or in the file its _FILE twin names (unset: skipped):
  ACME_ACL_REDIS_API_PASSWORD, ACME_ACL_REDIS_RELAY_PASSWORD,
  ACME_ACL_REDIS_NOTIFIER_PASSWORD, ACME_ACL_REDIS_ADMIN_PASSWORD,
  ACME_ACL_REDIS_SCALER_PASSWORD, ACME_ACL_PG_ORDERS_PASSWORD,
  ACME_ACL_PG_NOTIFIER_PASSWORD, ACME_ACL_PG_ADMIN_PASSWORD"""


def _cmd_setup_acl(args: argparse.Namespace) -> int:
    from acme_cli.acl.command import run_setup_acl

    return run_setup_acl(args)


def _cmd_openapi(_args: argparse.Namespace) -> int:
    import json

    from acme_orders.openapi import openapi_document

    print(json.dumps(openapi_document(), indent=2, ensure_ascii=False))
    return EXIT_OK


def _cmd_up(args: argparse.Namespace) -> int:
    from acme_cli.up import run_up

    return run_up(data_dir=args.data_dir, notifiers=args.notifiers)


def _cmd_smtp_sink(args: argparse.Namespace) -> int:
    from pathlib import Path

    from acme_cli.smtp_sink import run_sink_forever

    mail_dir = Path(args.mail_dir) if args.mail_dir else None
    asyncio.run(run_sink_forever(mail_dir, args.host, args.port))
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="acme",
        description="AcME Orders: orders over HTTP with a guaranteed confirmation e-mail.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage, 3 bad configuration, 4 service unreachable, "
        "5 not found. Operator commands: acme dead --help, acme stats --help, acme trace --help, "
        "acme keys --help.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: list[tuple[str, str, Callable[[argparse.Namespace], int]]] = [
        ("api", "serve the HTTP API (and its fast-path publisher)", _cmd_api),
        ("relay", "run the outbox relay, re-drive, receipts consumer and janitor", _cmd_relay),
        ("notifier", "run one notifier replica (consumer, claimer, reaper)", _cmd_notifier),
        ("migrate", "apply database migrations (safe to run twice and concurrently)", _cmd_migrate),
        ("openapi", "print the HTTP API's OpenAPI 3.1 document (docs/openapi.json)", _cmd_openapi),
    ]
    for name, help_text, handler in commands:
        sub.add_parser(name, help=help_text, description=help_text).set_defaults(handler=handler)
    up = sub.add_parser(
        "up",
        help="run the whole system locally (embedded PostgreSQL, Redis, SMTP sink)",
        description="Starts the whole system. ACME_DATABASE_URL, ACME_REDIS_URL and "
        "ACME_SMTP_URL, when set, replace the embedded PostgreSQL, Redis and SMTP sink.",
    )
    up.add_argument("--data-dir", default=None, help="where data and mail go (default .acme/)")
    up.add_argument("--notifiers", type=int, default=2, help="notifier replicas (default 2)")
    up.set_defaults(handler=_cmd_up)
    acl = sub.add_parser(
        "setup-acl",
        help="create or update each service's Redis user and PostgreSQL role (idempotent)",
        description="Creates or updates the Redis ACL users acme-api, acme-relay, "
        "acme-notifier, acme-admin, acme-scaler and the PostgreSQL roles acme_orders, "
        "acme_notifier, acme_admin, each allowed only its service's job, then grants the "
        "roles their tables. Prints what it did, never a password (docs/security.md).",
        epilog=_SETUP_ACL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    acl.set_defaults(handler=_cmd_setup_acl)
    sink = sub.add_parser(
        "smtp-sink",
        help="a development SMTP server that stores every message as an .eml file",
        description="Accepts every message and writes it to MAIL_DIR as <time>-<hash>.eml.",
    )
    sink.add_argument("--mail-dir", default=None, help="folder for .eml files (none: memory)")
    sink.add_argument("--host", default="127.0.0.1")
    sink.add_argument("--port", type=int, default=1025)
    sink.set_defaults(handler=_cmd_smtp_sink)
    from acme_cli.admin.cli import register as register_admin

    register_admin(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        handler: Callable[[argparse.Namespace], int] = args.handler
        code = handler(args)
    except SettingsError as exc:
        print(f"acme: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except (OSError, ConnectionError) as exc:
        print(f"acme: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
