"""`acme setup-acl`: makes each service's Redis user and PostgreSQL role what the code needs.

Connects with ACME_REDIS_URL (a user that may run ACL SETUSER, e.g. the operator's) and
ACME_DATABASE_URL (the owner role that runs `acme migrate`, with CREATEROLE), each optional:
only the servers configured are set up. Each credential's password comes from its variable
(ACME_ACL_REDIS_API_PASSWORD, ...) or from the file its `_FILE` twin names (a mounted
Secret); a credential with neither is skipped, and said so. Safe to run again: users are
reset to exactly their rules, roles get their password again, grants are applied whole.
What it did is printed, one line per user and role; no password, hash or verifier ever is.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

import asyncpg
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from acme_cli.acl.pg_roles import ROLES, RoleError, ensure_roles, grant_privileges
from acme_cli.acl.redis_users import USERS, apply_users
from acme_runtime.env import POSTGRES_SCHEMES, REDIS_SCHEMES, EnvReader, SettingsError, redact_url
from acme_runtime.redis_client import open_redis

__all__ = ["read_password", "run_setup_acl", "setup_acl"]

#: Printable ASCII without spaces (PostgreSQL would SASLprep anything else; a password that
#: survives every shell and YAML as is), long enough to resist guessing.
_PASSWORD: Final = re.compile(r"[!-~]{16,}")
_DIGEST: Final = re.compile(r"#[0-9a-f]{64}")


def read_password(env: EnvReader, name: str) -> str | None:
    """The password in `name`, or in the file `name`_FILE names; None when neither is set.
    Errors name the variable or the file, never what they hold."""
    value, file = env.raw(name), env.raw(f"{name}_FILE")
    if value is not None and file is not None:
        raise SettingsError(f"{name} and {name}_FILE are both set: set one")
    if file is not None:
        try:
            value = Path(file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{name}_FILE: cannot read {file}: {type(exc).__name__}") from None
    if value is None:
        return None
    if not _PASSWORD.fullmatch(value):
        raise SettingsError(
            f"{name}: a password is at least 16 printable ASCII characters without spaces "
            "(e.g. `openssl rand -base64 32`)"
        )
    return value


async def setup_acl(
    *,
    redis_url: str | None,
    database_url: str | None,
    redis_passwords: Mapping[str, str | None],
    pg_passwords: Mapping[str, str | None],
    out: Callable[[str], None],
) -> None:
    """Sets up the servers whose URL is given, printing each step through `out`."""
    if redis_url is not None:
        out(f"redis: {redact_url(redis_url)}")
        redis = open_redis(redis_url, socket_connect_timeout=10, socket_timeout=30)
        try:
            for line in await apply_users(redis, redis_passwords):
                out(line)
        finally:
            await redis.aclose()
    if database_url is not None:
        out(f"postgres: {redact_url(database_url)}")
        conn = await asyncpg.connect(database_url, timeout=10)
        try:
            for line in await ensure_roles(conn, pg_passwords):
                out(line)
            for line in await grant_privileges(conn):
                out(line)
        finally:
            await conn.close()


def run_setup_acl(_args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> int:
    env = EnvReader(environ)
    redis_url = env.optional_url("ACME_REDIS_URL", REDIS_SCHEMES)
    database_url = env.optional_url("ACME_DATABASE_URL", POSTGRES_SCHEMES)
    if redis_url is None and database_url is None:
        raise SettingsError(
            "ACME_REDIS_URL and ACME_DATABASE_URL: neither is set (the servers to set up, "
            "as a user that may run ACL SETUSER and as the owner role with CREATEROLE)"
        )
    redis_passwords = {user.name: read_password(env, user.password_env) for user in USERS}
    pg_passwords = {role.name: read_password(env, role.password_env) for role in ROLES}
    try:
        asyncio.run(
            setup_acl(
                redis_url=redis_url,
                database_url=database_url,
                redis_passwords=redis_passwords,
                pg_passwords=pg_passwords,
                out=lambda line: print(line, flush=True),
            )
        )
    except RoleError as exc:
        print(f"acme setup-acl: {exc}", file=sys.stderr)
        return 1
    except asyncpg.PostgresError as exc:
        print(f"acme setup-acl: PostgreSQL refused: {exc}", file=sys.stderr)
        return 1
    except (RedisConnectionError, RedisTimeoutError) as exc:
        print(f"acme setup-acl: Redis is unreachable: {exc}", file=sys.stderr)
        return 4
    except RedisError as exc:
        # An ACL error may quote the rule it refused: never its password hash.
        print(f"acme setup-acl: Redis refused: {_DIGEST.sub('#…', str(exc))}", file=sys.stderr)
        return 1
    return 0
