"""The argparse side of `acme dead …`, `acme stats`, `acme trace` and `acme keys …`: flags,
help, examples.

`register` adds the subcommands to `acme`'s parser. Each command's handler (`run_*`, in the
command module next to its flow) is imported only when that command runs: `acme api` and the
others must not pay for rich and the admin modules at every start.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = ["register"]

_RAW = argparse.RawDescriptionHelpFormatter

FOOTER: Final = """
environment:
  ACME_REDIS_URL, ACME_DATABASE_URL  the servers (each command needs only the ones it reads;
                              `acme dead` reads the archive of old dead letters in PostgreSQL
                              when ACME_DATABASE_URL is set)
  ACME_REPLAY_MAX=3           an entry already replayed this often is refused unless --force
  ACME_ADMIN_CONFIRM_ABOVE=3  replay/purge of more entries asks first unless --yes
  ACME_OPERATOR               your name in the audit trail (default $USER@host)
  ACME_STREAM_SHARDS=1        the shards the events travel on, as the services have it (and
                              ACME_STREAM_SHARDS_READ while shrinking): every one is read;
                              an entry of shard N>0 is named N/<ms>-<seq>

exit codes: 0 ok, 1 failure (entries refused, not confirmed, interrupted), 2 usage (malformed
id or duration), 3 configuration, 4 Redis/PostgreSQL unreachable, 5 not found (unknown id).
JSON output (--json) is a stable schema, documented in docs/runbook.md."""

DEAD_EPILOG: Final = (
    """examples:
  acme dead list                                  the 20 newest dead letters
  acme dead list --reason invalid_recipient --since 2h --limit 100
  acme dead list --before 1714557600000-0         the next (older) page
  acme dead show 1714557600000-0                  one entry: envelope, order timeline, audit
  acme dead show 3/1714557600000-0                the same, of an entry on shard 3
  acme dead replay --reason invalid_recipient --since 2h --dry-run
  acme dead replay --reason invalid_recipient --since 2h --yes --why "relay fixed, INC-42"
  acme dead purge --older-than 30d --yes --why "retention"
"""
    + FOOTER
)


Handler = Callable[[argparse.Namespace], int]


def _handler(module: str, name: str) -> Handler:
    """`name` in `acme_cli.admin.<module>`, imported when the command runs."""

    def run(args: argparse.Namespace) -> int:
        handler: Handler = getattr(importlib.import_module(f"acme_cli.admin.{module}"), name)
        return handler(args)

    return run


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _pii_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--show-pii", action="store_true", help="show e-mail addresses unmasked (default masked)"
    )


def _why_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--why", default="", help="why you do this, kept in the audit trail")


def _plan_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    parser.add_argument("--yes", action="store_true", help="do not ask, however many entries")


def _dead(sub: Subparsers) -> None:
    dead = sub.add_parser(
        "dead",
        help="see, explain, replay and purge dead letters",
        description="The dead-letter stream: e-mails the notifier gave up on, with the reason.",
        epilog=DEAD_EPILOG,
        formatter_class=_RAW,
    )
    commands = dead.add_subparsers(dest="dead_command", required=True, metavar="ACTION")
    _dead_list(commands)
    _dead_show(commands)
    _dead_replay(commands)
    _dead_purge(commands)


def _dead_list(commands: Subparsers) -> None:
    listing = commands.add_parser(
        "list",
        help="dead letters, newest first, a page at a time",
        description="Dead letters, newest first, from every shard's dead stream and their "
        "archive in PostgreSQL (column `where`). Reads one page of each, never the whole "
        "stream; `--before` the last id shown gives the next page. Ids are <ms>-<seq> on "
        "shard 0, <shard>/<ms>-<seq> on the others.",
        epilog=DEAD_EPILOG,
        formatter_class=_RAW,
    )
    listing.add_argument("--limit", type=int, default=20, help="entries per page (default 20)")
    listing.add_argument("--before", metavar="DEAD_ID", help="only entries older than this id")
    listing.add_argument("--since", help="dead within a duration (2h, 30m) or since a UTC time")
    listing.add_argument(
        "--reason", action="append", metavar="CLASS", help="reason class; repeat for several"
    )
    _pii_flag(listing)
    _json_flag(listing)
    listing.set_defaults(handler=_handler("commands_dead", "run_dead_list"))


def _dead_show(commands: Subparsers) -> None:
    show = commands.add_parser(
        "show",
        help="one dead letter: why, envelope, order timeline, audit",
        epilog=DEAD_EPILOG,
        formatter_class=_RAW,
    )
    show.add_argument("id", metavar="DEAD_ID")
    _pii_flag(show)
    _json_flag(show)
    show.set_defaults(handler=_handler("commands_dead", "run_dead_show"))


def _dead_replay(commands: Subparsers) -> None:
    replay = commands.add_parser(
        "replay",
        help="put dead letters back on the events stream with a fresh delivery budget",
        description="Moves each selected entry back onto the events stream and records it in "
        "the audit trail, atomically per entry: never both replayed and still dead, none lost "
        "if interrupted. An event whose e-mail was already sent is not sent again.",
        epilog=DEAD_EPILOG,
        formatter_class=_RAW,
    )
    replay.add_argument("ids", nargs="*", metavar="DEAD_ID", help="entries to replay")
    replay.add_argument("--all", action="store_true", help="every dead letter (see --since)")
    replay.add_argument("--reason", action="append", metavar="CLASS", help="by reason class")
    replay.add_argument("--since", help="with --all/--reason: only entries dead since then")
    _plan_flags(replay)
    replay.add_argument("--force", action="store_true", help="ignore the replay cap")
    _why_flag(replay)
    _json_flag(replay)
    replay.set_defaults(handler=_handler("commands_replay", "run_dead_replay"))


def _dead_purge(commands: Subparsers) -> None:
    purge = commands.add_parser(
        "purge",
        help="delete dead letters, with an audit record each",
        epilog=DEAD_EPILOG,
        formatter_class=_RAW,
    )
    purge.add_argument("ids", nargs="*", metavar="DEAD_ID", help="entries to delete")
    purge.add_argument("--older-than", metavar="DURATION", help="dead longer ago than (30d)")
    _plan_flags(purge)
    _why_flag(purge)
    _json_flag(purge)
    purge.set_defaults(handler=_handler("commands_replay", "run_dead_purge"))


def _stats(sub: Subparsers) -> None:
    stats = sub.add_parser(
        "stats",
        help="streams, lag, pending, dead letters, outbox, e-mail rate",
        description="Stream length, consumer-group lag (counted on Redis 6.2, which does not "
        "report it), pending entries and the age of the oldest, per-consumer pending and idle, "
        "dead letters, outbox backlog and e-mails sent in the last minute. With several "
        "shards, one row per shard (length, lag, pending, oldest pending and unread, dead "
        "letters, receipts lag) and their total.",
        epilog="""examples:
  acme stats
  acme stats --watch --interval 1        redraws in place until Ctrl-C
  acme stats --json --watch --count 60   one JSON document per line, for a minute
"""
        + FOOTER,
        formatter_class=_RAW,
    )
    stats.add_argument("--watch", action="store_true", help="refresh until Ctrl-C")
    stats.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    stats.add_argument("--count", type=int, help="with --watch: stop after this many")
    _json_flag(stats)
    stats.set_defaults(handler=_handler("commands_ops", "run_stats"))


def _trace(sub: Subparsers) -> None:
    trace = sub.add_parser(
        "trace",
        help="the whole path of one order, from creation to e-mail",
        description="Created, outbox, published (stream id), each delivery attempt with "
        "consumer and error, sent or dead, replays, with timestamps and the trace id.",
        epilog="examples:\n  acme trace 0190f1c2-7a3e-7c4e-9b1d-2f6a8e4c1d00\n" + FOOTER,
        formatter_class=_RAW,
    )
    trace.add_argument("order_id", metavar="ORDER_ID")
    _pii_flag(trace)
    _json_flag(trace)
    trace.set_defaults(handler=_handler("commands_ops", "run_trace"))


KEYS_EPILOG: Final = """examples:
  acme keys create --name checkout --scope orders:write --scope orders:read
  KEY=$(acme keys create --name ci --scope orders:write | tail -n 1)
  acme keys list --active
  acme keys revoke 3f9c2a7b1d04 --why "leaked in a build log"

environment:
  ACME_DATABASE_URL           the orders database (the keys live in its api_keys table)
  ACME_OPERATOR               your name in the audit trail (default $USER@host)
  ACME_STREAM_SHARDS=1        the shards the events travel on, as the services have it (and
                              ACME_STREAM_SHARDS_READ while shrinking): every one is read;
                              an entry of shard N>0 is named N/<ms>-<seq>

exit codes: 0 ok, 2 usage (unknown scope, malformed id), 3 configuration, 4 PostgreSQL
unreachable, 5 not found (unknown key id)."""


def _keys(sub: Subparsers) -> None:
    keys = sub.add_parser(
        "keys",
        help="create, list and revoke the order API's keys",
        description="API keys for `Authorization: Bearer <key>` on the order API. A key is "
        "shown once, when created; only its SHA-256 is stored. Creating and revoking are "
        "audited (api_key_events, with ACME_OPERATOR).",
        epilog=KEYS_EPILOG,
        formatter_class=_RAW,
    )
    commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    def action(name: str, help_text: str, handler: str) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help_text, epilog=KEYS_EPILOG, formatter_class=_RAW)
        parser.set_defaults(handler=_handler("commands_keys", handler))
        return parser

    create = action("create", "a new key; printed once, as the last line", "run_keys_create")
    create.add_argument("--name", required=True, help="what the key is for (e.g. checkout)")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        metavar="SCOPE",
        help="orders:write (place orders) or orders:read (read them); repeat for both",
    )
    listing = action("list", "every key, never its secret", "run_keys_list")
    listing.add_argument("--active", action="store_true", help="only keys not revoked")
    _json_flag(listing)
    revoke = action("revoke", "refused by the API within ACME_API_KEY_CACHE_S", "run_keys_revoke")
    revoke.add_argument("id", metavar="KEY_ID", help="the key's id, as `acme keys list` shows")
    _why_flag(revoke)
    _json_flag(revoke)


def register(sub: Subparsers) -> None:
    """Adds `dead`, `stats`, `trace` and `keys` to `acme`'s subcommands."""
    _dead(sub)
    _stats(sub)
    _trace(sub)
    _keys(sub)
