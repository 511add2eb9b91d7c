"""The Redis ACL users: one per process, each allowed the keys and commands its code uses.

A user's commands are its direct commands (what its Python calls: XREADGROUP, SET NX, ...)
plus every command of the Lua scripts it runs, read from the scripts in lua/ themselves: a
script runs with its caller's permissions, so an ACL that missed one of a script's commands
would fail that script at its first call in production. Key patterns are the `{acme}:` names
of acme_runtime.channels and acme_notify.keys.

Redis 6.2 key patterns (`~`) allow reads and writes alike; Redis 7's read-only patterns
(`%R~`) could narrow the admin's view of the receipts stream further, but 6.2 (the embedded
server, and what the code supports) refuses them. Passwords go to Redis as their SHA-256
(`#<hex>`), the form Redis keeps, so no plaintext appears in a command Redis could log.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from acme_notify.keys import AUDIT_STREAM, HELD_SET
from acme_orders.ratelimit import RATE_LIMIT_PREFIX
from acme_runtime.channels import (
    DEAD_STREAM,
    EVENTS_STREAM,
    HASH_TAG,
    PUBLISHED_PREFIX,
    RECEIPTS_STREAM,
)
from acme_runtime.lua import load_script

__all__ = ["FORBIDDEN", "USERS", "RedisUser", "acl_rules", "apply_users", "script_commands"]

#: Every private key of the notifier: last errors, breakers, locks, held set, recipient windows.
NOTIFY_KEYS: Final = f"{HASH_TAG}:notify:*"
#: What no credential of the system may run, whatever it is for.
FORBIDDEN: Final = frozenset(
    {"flushall", "flushdb", "config", "keys", "shutdown", "debug", "module", "acl", "monitor"}
)
#: How acme_runtime.lua runs a script: EVALSHA, EVAL after NOSCRIPT, SCRIPT EXISTS/LOAD first
#: for a pipeline of calls.
LUA_LOADER: Final = ("evalsha", "eval", "script|exists", "script|load")
#: Commands whose ACL names a subcommand (`xinfo|groups`), as in `ACL SETUSER +xinfo|groups`.
_CONTAINERS: Final = frozenset({"xinfo", "xgroup", "script", "client", "object", "memory"})
# redis.call('XADD', ...), redis.pcall(...), and pcall(redis.call, 'XINFO', 'CONSUMERS', ...).
_CALL: Final = re.compile(r"redis\.p?call\s*[(,]\s*'([A-Za-z]+)'(?:\s*,\s*'([A-Za-z]+)')?")


@dataclass(frozen=True)
class RedisUser:
    name: str
    #: Where `acme setup-acl` finds its password (or in the file named by <this>_FILE).
    password_env: str
    job: str
    keys: tuple[str, ...]
    #: Commands the process's Python sends itself.
    commands: tuple[str, ...]
    #: Scripts of lua/ it runs; their commands are added (`script_commands`).
    scripts: tuple[str, ...] = ()

    def all_commands(self) -> frozenset[str]:
        found = set(self.commands)
        if self.scripts:
            found |= set(LUA_LOADER)
        for script in self.scripts:
            found |= script_commands(script)
        return frozenset(found)


def _words(*lines: str) -> tuple[str, ...]:
    return tuple(word for line in lines for word in line.split())


@cache
def script_commands(name: str) -> frozenset[str]:
    """The commands lua/<name>.lua calls, lower case, `container|subcommand` where ACLs need
    the subcommand."""
    found: set[str] = set()
    for command, sub in _CALL.findall(load_script(name).source):
        command = command.lower()
        found.add(f"{command}|{sub.lower()}" if command in _CONTAINERS and sub else command)
    return frozenset(found)


USERS: Final = (
    RedisUser(
        "acme-api",
        "ACME_ACL_REDIS_API_PASSWORD",
        "publishes events on the fast path; takes from the per-key rate-limit buckets",
        keys=(EVENTS_STREAM, f"{PUBLISHED_PREFIX}*", f"{RATE_LIMIT_PREFIX}*"),
        commands=("ping",),
        scripts=("publish_once", "rate_limit"),
    ),
    RedisUser(
        "acme-relay",
        "ACME_ACL_REDIS_RELAY_PASSWORD",
        "publishes and re-drives events; reads, acknowledges and deletes receipts",
        keys=(EVENTS_STREAM, f"{PUBLISHED_PREFIX}*", RECEIPTS_STREAM),
        # Receipts: its group, claims, acknowledges, deletes, in one MULTI with the UNLINK of
        # the finished events' publish-once keys.
        commands=_words(
            "ping xgroup|create xreadgroup xautoclaim xack xdel unlink multi exec discard"
        ),
        scripts=("publish_once", "prune_consumers"),
    ),
    RedisUser(
        "acme-notifier",
        "ACME_ACL_REDIS_NOTIFIER_PASSWORD",
        "reads its group, claims, acknowledges, dead-letters, archives; writes receipts",
        keys=(EVENTS_STREAM, RECEIPTS_STREAM, DEAD_STREAM, AUDIT_STREAM, NOTIFY_KEYS),
        commands=_words(
            "ping xgroup|create xreadgroup xpending xinfo|groups xtrim xlen xrange",
            "set get pttl",  # locks (SET NX PX) and the shared breakers
            # The held set: the reaper skips held entries and forgets released ones.
            "zmscore zremrangebyscore",
        ),
        scripts=_words(
            "ack_sent archive_dead attempt_failed claim_due dead_evictable dead_letter",
            "heartbeat hold prune_consumers recipient_quota refund replay_dead stream_lag",
        ),
    ),
    RedisUser(
        "acme-admin",
        "ACME_ACL_REDIS_ADMIN_PASSWORD",
        "acme dead/stats/trace: reads the streams, replays and purges dead letters",
        keys=(EVENTS_STREAM, RECEIPTS_STREAM, DEAD_STREAM, AUDIT_STREAM, HELD_SET),
        scripts=("dead_index", "purge_dead", "replay_dead", "stream_lag"),
        commands=_words(
            "ping exists xinfo|stream xinfo|groups xinfo|consumers xpending xlen xrange xrevrange",
            "zscore",  # acme trace: when a held entry is released
            # Restoring an archived entry and replaying it in one MULTI (WATCH on the stream).
            "xadd xdel watch unwatch multi exec discard",
        ),
    ),
    RedisUser(
        "acme-scaler",
        "ACME_ACL_REDIS_SCALER_PASSWORD",
        "KEDA's redis-streams scaler: the notifier group's lag, pending count, stream length",
        keys=(EVENTS_STREAM,),
        commands=_words("ping xinfo|groups xpending xlen"),
    ),
)


#: redis-py names itself on every new connection (CLIENT SETINFO, Redis >= 7.2) and ignores a
#: refusal, which Redis would still write to its ACL LOG once per connection. Granted only where
#: the subcommand exists: Redis 7.0 refuses a rule naming an unknown one.
CLIENT_SETINFO: Final = "client|setinfo"


def acl_rules(user: RedisUser, password: str, *, setinfo: bool = False) -> list[str]:
    """The ACL SETUSER rules that make `user` exactly this, whatever it was before: `reset`
    first, so a rule dropped from the code is dropped from the server too."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    commands = sorted(user.all_commands() | ({CLIENT_SETINFO} if setinfo else set()))
    return [
        "reset",
        "on",
        f"#{digest}",
        "resetchannels",
        *(f"~{pattern}" for pattern in user.keys),
        "-@all",
        *(f"+{command}" for command in commands),
    ]


async def apply_users(redis: Redis, passwords: Mapping[str, str | None]) -> list[str]:
    """Creates or updates every user whose password is given (user name -> password); the
    lines say what happened, naming users, never passwords."""
    lines: list[str] = []
    changed = False
    server: Any = await redis.info("server")
    version = tuple(int(part) for part in str(server["redis_version"]).split(".")[:2])
    for user in USERS:
        password = passwords.get(user.name)
        if password is None:
            lines.append(f"redis: {user.name}: skipped ({user.password_env} not set)")
            continue
        existing: Any = await redis.acl_getuser(user.name)
        rules = acl_rules(user, password, setinfo=version >= (7, 2))
        # As a list of rules, not acl_setuser's keywords: the rules are what the tests read.
        await redis.execute_command("ACL", "SETUSER", user.name, *rules)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        changed = True
        lines.append(
            f"redis: {user.name}: {'updated' if existing else 'created'}"
            f" ({', '.join(user.keys)}; {len(user.all_commands())} commands)"
        )
    if changed:
        try:
            await redis.acl_save()
            lines.append("redis: users saved to the server's ACL file")
        except ResponseError:
            # No aclfile: the users live in memory (and in replicas' memory only once set
            # there too) until the operator persists them.
            lines.append(
                "redis: no ACL file configured: persist the users (CONFIG REWRITE or an "
                "aclfile), or run acme setup-acl again after every Redis restart"
            )
    return lines
