"""The admin commands' settings: read once from the environment in the CLI, then passed down.

Only the URLs a command needs are required, and only when it runs: `acme dead list` works with
PostgreSQL down or unconfigured, `acme trace` needs both.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from typing import Annotated

import msgspec

from acme_runtime.channels import Shard, StreamShards, StreamShardsRead, shards
from acme_runtime.env import (
    POSTGRES_SCHEMES,
    REDIS_SCHEMES,
    Env,
    EnvReader,
    SettingsError,
    load_settings,
)

__all__ = ["AdminSettings"]


def _login(env: EnvReader) -> str:
    user = env.raw("USER") or env.raw("LOGNAME")
    if user is None:
        try:
            user = getpass.getuser()
        except (OSError, KeyError):  # a container uid with no passwd entry
            user = f"uid-{os.getuid()}"
    return f"{user}@{env.raw('HOSTNAME') or socket.gethostname()}"


class AdminSettings(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: Annotated[
        str | None, Env("ACME_REDIS_URL", "the notifier's Redis", schemes=REDIS_SCHEMES)
    ] = None
    database_url: Annotated[
        str | None,
        Env("ACME_DATABASE_URL", "the notifier's PostgreSQL", schemes=POSTGRES_SCHEMES),
    ] = None
    replay_max: Annotated[
        int,
        Env(
            "ACME_REPLAY_MAX",
            "an entry replayed this many times is refused (it keeps dying) unless `--force`",
            minimum=1,
        ),
    ] = 3
    confirm_above: Annotated[
        int,
        Env(
            "ACME_ADMIN_CONFIRM_ABOVE",
            "replay or purge of more entries than this asks for confirmation unless `--yes`",
        ),
    ] = 3
    audit_maxlen: Annotated[
        int,
        Env(
            "ACME_AUDIT_MAXLEN",
            "approximate cap of the audit stream's length (XADD MAXLEN ~)",
            minimum=1_000,
        ),
    ] = 100_000
    operator: Annotated[
        str,
        Env(
            "ACME_OPERATOR",
            "who is acting, for the audit trail: default `$USER@host`",
            default_from=_login,
        ),
    ] = "unknown"
    stream_shards: StreamShards = 1
    stream_shards_read: StreamShardsRead = 0
    connect_timeout_s: Annotated[
        float,
        Env(
            "ACME_ADMIN_CONNECT_TIMEOUT_S",
            "how long the admin commands wait for Redis/PostgreSQL",
            minimum=0.1,
        ),
    ] = 3.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AdminSettings:
        return load_settings(cls, environ)

    @property
    def shards(self) -> tuple[Shard, ...]:
        """The shards the commands read: the first ACME_STREAM_SHARDS, or more while
        shrinking (ACME_STREAM_SHARDS_READ), as the services read them."""
        return shards(max(self.stream_shards, self.stream_shards_read))

    def require_redis(self) -> str:
        if self.redis_url is None:
            raise SettingsError("ACME_REDIS_URL: not set (this command reads Redis)")
        return self.redis_url

    def require_database(self) -> str:
        if self.database_url is None:
            raise SettingsError("ACME_DATABASE_URL: not set (this command reads PostgreSQL)")
        return self.database_url
