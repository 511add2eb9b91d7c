"""The Redis ACL users: one per process, each allowed the keys and commands its code uses.

A user's commands are its direct commands (what its Python calls: XREADGROUP, SET NX, ...)
plus every command of the Lua scripts it runs, read from the scripts in lua/ themselves: a
script runs with its caller's permissions, so an ACL that missed one of a script's commands
would fail that script at its first call in production. Key patterns are the names of
acme_runtime.channels and acme_notify.keys, for every shard: a shard's keys differ from shard
0's only by their hash tag (`{acme:3}:events` for `{acme}:events`), so one pattern per name
with the tag `{acme*}` (`SHARD_TAGS`: braces are literal in ACL globs) covers every shard a
deployment runs or may grow to, and nothing the name does not.

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

from acme_orders.ratelimit import RATE_LIMIT_PREFIX
from acme_runtime.channels import GLOBAL_TAG, shard
from acme_runtime.lua import load_script
from acme_runtime.redis_client import is_cluster

__all__ = [
    "CLUSTER_CLIENT",
    "FORBIDDEN",
    "SHARD_TAGS",
    "USERS",
    "RedisUser",
    "acl_rules",
    "apply_users",
    "every_shard",
    "script_commands",
]

#: The hash tags of every shard in an ACL glob: `{acme}` (shard 0, and the keys of no shard)
#: and `{acme:<i>}`.
SHARD_TAGS: Final = "{acme*}"


def every_shard(shard_0_key: str) -> str:
    """The ACL pattern of one of shard 0's key names on every shard (`{acme}:events` ->
    `{acme*}:events`)."""
    if not shard_0_key.startswith(GLOBAL_TAG):
        raise ValueError(f"{shard_0_key!r} does not carry the tag {GLOBAL_TAG}")
    return SHARD_TAGS + shard_0_key.removeprefix(GLOBAL_TAG)


_SHARD_0 = shard(0)
EVENTS: Final = every_shard(_SHARD_0.events)
RECEIPTS: Final = every_shard(_SHARD_0.receipts)
DEAD: Final = every_shard(_SHARD_0.dead)
AUDIT: Final = every_shard(_SHARD_0.audit)
PUBLISHED: Final = every_shard(f"{_SHARD_0.published_prefix}*")
HELD: Final = every_shard(_SHARD_0.held)
#: Every private key of the notifier, on every shard (last errors, held sets, locks) and on no
#: shard (breakers, recipient windows).
NOTIFY_KEYS: Final = every_shard(f"{GLOBAL_TAG}:notify:*")
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
        keys=(EVENTS, PUBLISHED, f"{RATE_LIMIT_PREFIX}*"),
        commands=("ping",),
        scripts=("publish_once", "rate_limit"),
    ),
    RedisUser(
        "acme-relay",
        "ACME_ACL_REDIS_RELAY_PASSWORD",
        "publishes and re-drives events; reads, acknowledges and deletes receipts",
        keys=(EVENTS, PUBLISHED, RECEIPTS),
        # Receipts: its group, reads and claims; acknowledges a receipt deleted while pending.
        # settle_receipts.lua acknowledges and deletes the applied ones and unlinks the
        # finished events' publish-once keys.
        commands=_words("ping xgroup|create xreadgroup xautoclaim xack"),
        scripts=("publish_once", "prune_consumers", "settle_receipts"),
    ),
    RedisUser(
        "acme-notifier",
        "ACME_ACL_REDIS_NOTIFIER_PASSWORD",
        "reads its group, claims, acknowledges, dead-letters, archives; writes receipts",
        keys=(EVENTS, RECEIPTS, DEAD, AUDIT, NOTIFY_KEYS),
        commands=_words(
            "ping xgroup|create xreadgroup xpending xinfo|groups xlen xrange",
            "set get pttl",  # locks (SET NX PX) and the shared breakers
            "zremrangebyscore",  # the reaper forgets released members of the held set
        ),
        scripts=_words(
            "ack_sent archive_dead attempt_failed claim_due dead_evictable dead_letter",
            "heartbeat hold prune_consumers reap_round recipient_quota refund replay_dead",
            "stream_lag",
        ),
    ),
    RedisUser(
        "acme-admin",
        "ACME_ACL_REDIS_ADMIN_PASSWORD",
        "acme dead/stats/trace: reads the streams, replays and purges dead letters",
        keys=(EVENTS, RECEIPTS, DEAD, AUDIT, HELD),
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
        keys=(EVENTS,),
        commands=_words("ping xinfo|groups xpending xlen"),
    ),
)


#: redis-py names itself on every new connection (CLIENT SETINFO, Redis >= 7.2) and ignores a
#: refusal, which Redis would still write to its ACL LOG once per connection. Granted only where
#: the subcommand exists: Redis 7.0 refuses a rule naming an unknown one.
CLIENT_SETINFO: Final = "client|setinfo"


#: What a Redis Cluster client asks every node it meets: the slot map (CLUSTER SLOTS, or
#: CLUSTER SHARDS) and the command table (COMMAND, to find each command's keys). Read-only
#: introspection, granted only on a cluster.
CLUSTER_CLIENT: Final = frozenset({"cluster|slots", "cluster|shards", "command"})


def acl_rules(
    user: RedisUser, password: str, *, setinfo: bool = False, cluster: bool = False
) -> list[str]:
    """The ACL SETUSER rules that make `user` exactly this, whatever it was before: `reset`
    first, so a rule dropped from the code is dropped from the server too."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    extra = ({CLIENT_SETINFO} if setinfo else set()) | (CLUSTER_CLIENT if cluster else set())
    commands = sorted(user.all_commands() | extra)
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
    lines say what happened, naming users, never passwords. On a Redis Cluster (users are per
    node, never replicated) every node, replicas included, gets the same users."""
    lines: list[str] = []
    changed = False
    cluster = is_cluster(redis)
    # Keyword arguments of a cluster client's commands: which nodes run them.
    every_node: dict[str, Any] = {"target_nodes": "all"} if cluster else {}
    server: Any = await redis.info("server")
    if cluster:  # one node's answer is as good as another's: they run the same release
        server = next(iter(server.values())) if "redis_version" not in server else server
    version = tuple(int(part) for part in str(server["redis_version"]).split(".")[:2])
    for user in USERS:
        password = passwords.get(user.name)
        if password is None:
            lines.append(f"redis: {user.name}: skipped ({user.password_env} not set)")
            continue
        existing: Any = await redis.acl_getuser(user.name)
        rules = acl_rules(user, password, setinfo=version >= (7, 2), cluster=cluster)
        # As a list of rules, not acl_setuser's keywords: the rules are what the tests read.
        await redis.execute_command("ACL", "SETUSER", user.name, *rules, **every_node)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        changed = True
        lines.append(
            f"redis: {user.name}: {'updated' if existing else 'created'}"
            f" ({', '.join(user.keys)}; {len(user.all_commands())} commands)"
        )
    if changed:
        try:
            await redis.execute_command("ACL", "SAVE", **every_node)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
            lines.append("redis: users saved to the server's ACL file")
        except ResponseError:
            # No aclfile: the users live in memory (and in replicas' memory only once set
            # there too) until the operator persists them.
            lines.append(
                "redis: no ACL file configured: persist the users (CONFIG REWRITE or an "
                "aclfile), or run acme setup-acl again after every Redis restart"
            )
    return lines
