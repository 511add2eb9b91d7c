"""The admin commands' settings: read once from the environment in the CLI, then passed down.

Only the URLs a command needs are required, and only when it runs: `acme dead list` works with
PostgreSQL down or unconfigured, `acme trace` needs both.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping

import msgspec

from acme_runtime.env import EnvReader, SettingsError, struct_defaults

__all__ = ["AdminSettings"]


class AdminSettings(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: str | None = None
    database_url: str | None = None
    #: An entry replayed this many times is refused (it keeps dying) unless `--force`.
    replay_max: int = 3
    #: Replay or purge of more entries than this asks for confirmation unless `--yes`.
    confirm_above: int = 3
    #: Approximate cap of the audit stream's length (XADD MAXLEN ~).
    audit_maxlen: int = 100_000
    #: Who is acting, for the audit trail: ACME_OPERATOR, else `$USER@host`.
    operator: str = "unknown"
    connect_timeout_s: float = 3.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AdminSettings:
        env = EnvReader(environ)
        d = struct_defaults(cls)
        return cls(
            redis_url=env.optional_url("ACME_REDIS_URL", ("redis", "rediss", "unix")),
            database_url=env.optional_url("ACME_DATABASE_URL", ("postgresql", "postgres")),
            replay_max=env.integer("ACME_REPLAY_MAX", d["replay_max"], minimum=1),
            confirm_above=env.integer("ACME_ADMIN_CONFIRM_ABOVE", d["confirm_above"]),
            audit_maxlen=env.integer("ACME_AUDIT_MAXLEN", d["audit_maxlen"], minimum=1_000),
            operator=env.raw("ACME_OPERATOR") or _login(env),
            connect_timeout_s=env.number(
                "ACME_ADMIN_CONNECT_TIMEOUT_S", d["connect_timeout_s"], minimum=0.1
            ),
        )

    def require_redis(self) -> str:
        if self.redis_url is None:
            raise SettingsError("ACME_REDIS_URL: not set (this command reads Redis)")
        return self.redis_url

    def require_database(self) -> str:
        if self.database_url is None:
            raise SettingsError("ACME_DATABASE_URL: not set (this command reads PostgreSQL)")
        return self.database_url


def _login(env: EnvReader) -> str:
    user = env.raw("USER") or env.raw("LOGNAME")
    if user is None:
        try:
            user = getpass.getuser()
        except (OSError, KeyError):  # a container uid with no passwd entry
            user = f"uid-{os.getuid()}"
    return f"{user}@{env.raw('HOSTNAME') or socket.gethostname()}"
