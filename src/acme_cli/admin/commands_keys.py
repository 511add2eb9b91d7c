"""`acme keys create`, `acme keys list` and `acme keys revoke`: the order API's callers.

`create` prints the new key as the last line of its output (scripts take it with `tail -n 1`);
it is shown once: only its SHA-256 is stored. Creating and revoking are audited in
`api_key_events` with `ACME_OPERATOR`. A revoked key stops working within
`ACME_API_KEY_CACHE_S` of the API processes (their cache of key look-ups).
"""

from __future__ import annotations

import argparse
import re
from typing import Final

from rich.table import Table

from acme_cli.admin.clients import connect
from acme_cli.admin.edge import Flow, checked
from acme_cli.admin.errors import NotFound, UsageError
from acme_cli.admin.render import Output, when
from acme_cli.admin.settings import AdminSettings
from acme_orders.api_keys import SCOPES, ApiKey, KeyStore, parse_token

__all__ = [
    "keys_create",
    "keys_list",
    "keys_revoke",
    "run_keys_create",
    "run_keys_list",
    "run_keys_revoke",
]

_KEY_ID: Final = re.compile(r"[0-9a-f]{12}")
_NAME: Final = re.compile(r"[^\x00-\x1f\x7f]{1,100}")


def key_id_arg(text: str) -> str:
    """A key's id (12 hex digits, as `acme keys list` shows it), or the id of a whole key."""
    value = text.strip()
    parsed = parse_token(value)
    if parsed is not None:
        return parsed[0]
    if not _KEY_ID.fullmatch(value):
        raise UsageError(f"{text!r} is not an API key id (12 hex digits, e.g. 3f9c2a7b1d04)")
    return value


def _document(key: ApiKey) -> dict[str, object]:
    return {
        "id": key.key_id,
        "name": key.name,
        "scopes": list(key.scopes),
        "created_at": key.created_at,
        "created_by": key.created_by,
        "revoked_at": key.revoked_at,
        "revoked_by": key.revoked_by,
    }


async def keys_create(
    settings: AdminSettings, out: Output, *, name: str, scopes: tuple[str, ...]
) -> int:
    async with connect(settings, postgres=True) as clients:
        issued = await KeyStore(clients.pool).create(
            name=name, scopes=scopes, operator=settings.operator
        )
    key = issued.key
    listed = ", ".join(key.scopes)
    out.say(f"created API key {key.key_id} ({key.name!r}, scopes {listed}) as {key.created_by}")
    out.say("it is shown only this once (only its hash is stored); the key is the last line:")
    # Plain print, never rich: the key must come out exactly as it is, on a line of its own.
    print(issued.token, flush=True)
    return 0


async def keys_list(settings: AdminSettings, out: Output, *, include_revoked: bool) -> int:
    async with connect(settings, postgres=True) as clients:
        found = await KeyStore(clients.pool).keys(include_revoked=include_revoked)
    if out.as_json:
        out.json([_document(key) for key in found])
        return 0
    table = Table(title=f"API keys: {len(found)} (times UTC; secrets are never shown)")
    for column in ("id", "name", "scopes", "created", "created by", "revoked", "revoked by"):
        table.add_column(column)
    for key in found:
        table.add_row(
            key.key_id,
            key.name,
            " ".join(key.scopes),
            when(key.created_at),
            key.created_by,
            when(key.revoked_at) if key.revoked_at else "-",
            key.revoked_by or "-",
        )
    out.console.print(table)
    return 0


async def keys_revoke(settings: AdminSettings, out: Output, *, key_id: str, why: str) -> int:
    async with connect(settings, postgres=True) as clients:
        try:
            key, now = await KeyStore(clients.pool).revoke(
                key_id, operator=settings.operator, why=why
            )
        except LookupError:
            raise NotFound(f"no API key {key_id}") from None
    if out.as_json:
        out.json({**_document(key), "revoked_now": now})
    elif now:
        out.say(
            f"revoked API key {key.key_id} ({key.name!r}); the API refuses it within "
            "ACME_API_KEY_CACHE_S (5 s by default)"
        )
    else:
        out.say(f"API key {key.key_id} was already revoked at {when(key.revoked_at)}")
    return 0


def run_keys_create(args: argparse.Namespace) -> int:
    def build() -> Flow:
        name = args.name.strip()
        if not _NAME.fullmatch(name):
            raise UsageError("--name must be 1-100 characters, without control characters")
        unknown = sorted(set(args.scope) - set(SCOPES))
        if unknown:
            raise UsageError(f"unknown scope {unknown[0]!r}: choose from {', '.join(SCOPES)}")
        scopes = tuple(dict.fromkeys(args.scope))  # in the order given, once each
        return lambda s, out: keys_create(s, out, name=name, scopes=scopes)

    return checked(args, build)


def run_keys_list(args: argparse.Namespace) -> int:
    return checked(args, lambda: lambda s, out: keys_list(s, out, include_revoked=not args.active))


def run_keys_revoke(args: argparse.Namespace) -> int:
    def build() -> Flow:
        key_id = key_id_arg(args.id)
        return lambda s, out: keys_revoke(s, out, key_id=key_id, why=args.why)

    return checked(args, build)
