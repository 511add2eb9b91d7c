"""The credentials' rules hold together with the code they serve: each Redis user runs every
script its service loads, with every command of those scripts and none of the forbidden ones;
each table a migration creates is granted to some role; passwords are
read without ever being echoed. Their effect on real servers: tests/integration/
test_least_privilege.py."""

from __future__ import annotations

import hashlib
import re
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

from acme_cli.acl.command import read_password
from acme_cli.acl.pg_roles import ROLES, managed_tables, scram_verifier
from acme_cli.acl.redis_users import (
    FORBIDDEN,
    SHARD_TAGS,
    USERS,
    RedisUser,
    acl_rules,
    every_shard,
    script_commands,
)
from acme_notify import keys as notify_keys
from acme_orders.ratelimit import RATE_LIMIT_PREFIX
from acme_runtime.channels import MAX_SHARDS, Shard, shard
from acme_runtime.env import EnvReader, SettingsError
from acme_runtime.lua import lua_dir

SRC = Path(__file__).resolve().parents[2] / "src"
_LOADS = re.compile(r"load_script\(\s*\"([a-z_]+)\"")
_CREATES = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?([a-z_.]+)", re.IGNORECASE)
USER = {user.name: user for user in USERS}


def _scripts_loaded(*paths: str) -> set[str]:
    found: set[str] = set()
    for path in paths:
        for file in (SRC / path).rglob("*.py") if (SRC / path).is_dir() else [SRC / path]:
            found |= set(_LOADS.findall(file.read_text(encoding="utf-8")))
    return found


def _scripts_of(*names: str) -> set[str]:
    return {script for name in names for script in USER[name].scripts}


def test_script_commands_are_read_from_the_lua_files() -> None:
    """Plain calls, pcall(redis.call, ...) and container commands with their subcommand."""
    assert script_commands("publish_once") == {"get", "xadd", "set"}
    assert script_commands("prune_consumers") == {"xinfo|consumers", "xgroup|delconsumer"}


@pytest.mark.parametrize(
    ("code", "users"),
    [
        ("acme_orders", ("acme-api", "acme-relay")),
        ("acme_notify", ("acme-notifier",)),
        ("acme_cli/admin", ("acme-admin",)),
        ("acme_runtime/consumers.py", ("acme-relay", "acme-notifier", "acme-admin")),
    ],
)
def test_each_service_user_runs_every_script_its_code_loads(
    code: str, users: tuple[str, ...]
) -> None:
    """A script the code loads but its user may not run would fail in production only."""
    loaded = _scripts_loaded(code)
    assert loaded, code
    assert loaded <= _scripts_of(*users), sorted(loaded - _scripts_of(*users))


def test_every_script_a_user_runs_exists() -> None:
    """No user names a script that lua/ does not have."""
    for user in USERS:
        for script in user.scripts:
            assert (lua_dir() / f"{script}.lua").is_file(), (user.name, script)


def test_no_user_may_run_a_forbidden_command() -> None:
    """Nobody gets FLUSHALL, FLUSHDB, CONFIG, KEYS, SHUTDOWN, DEBUG, MODULE, ACL, MONITOR."""
    for user in USERS:
        granted = {command.split("|")[0] for command in user.all_commands()}
        assert not granted & FORBIDDEN, (user.name, granted & FORBIDDEN)
        assert all(re.fullmatch(r"[a-z]+(\|[a-z]+)?", c) for c in user.all_commands())


def _may(user: RedisUser, key: str) -> bool:
    """Whether one of the user's patterns matches the key (Redis's glob: `*` any run of
    characters, braces literal; fnmatch's, for patterns with no `[` or `?`)."""
    assert not any(c in pattern for pattern in user.keys for c in "[?\\"), user.keys
    return any(fnmatchcase(key, pattern) for pattern in user.keys)


def _shard_keys(on: Shard) -> dict[str, str]:
    """Every key of one shard, by what it is."""
    return {
        "events": on.events,
        "receipts": on.receipts,
        "dead": on.dead,
        "audit": on.audit,
        "published": on.published_key("0190f1c2-7a3e-7c4e-9b1d-2f6a8e4c1d00"),
        "last_error": on.last_error,
        "held": on.held,
        "reaper_lock": on.reaper_lock,
        "archiver_lock": on.archiver_lock,
    }


#: The keys of each shard each user's code touches; every other shard key is refused it.
SHARD_KEYS_NEEDED = {
    "acme-api": {"events", "published"},
    "acme-relay": {"events", "published", "receipts"},
    "acme-notifier": {
        "events", "receipts", "dead", "audit", "last_error", "held", "reaper_lock",
        "archiver_lock",
    },
    "acme-admin": {"events", "receipts", "dead", "audit", "held"},
    "acme-scaler": {"events"},
}  # fmt: skip


def test_key_patterns_give_each_user_its_keys_on_every_shard_and_no_others() -> None:
    """On each of the 256 possible shards (shard 0's historical `{acme}` names, `{acme:i}`
    after), a user's patterns match exactly the shard keys its code touches."""
    assert set(SHARD_KEYS_NEEDED) == set(USER)
    for index in range(MAX_SHARDS):
        for what, key in _shard_keys(shard(index)).items():
            for name, user in USER.items():
                assert _may(user, key) == (what in SHARD_KEYS_NEEDED[name]), (name, key)


def test_keys_of_no_shard_stay_with_their_one_user() -> None:
    """The breakers and recipient windows (the global tag) are the notifier's alone, the
    rate-limit buckets the API's alone."""
    private = [
        value
        for name, value in vars(notify_keys).items()
        if name.isupper() and isinstance(value, str) and ":notify:" in value
    ]
    assert notify_keys.BREAKER_KEY in private
    for key in [*private, notify_keys.breaker_key("fallback"), f"{notify_keys.RECIPIENTS_PREFIX}1"]:
        holders = {name for name, user in USER.items() if _may(user, key)}
        assert holders <= {"acme-notifier", "acme-admin"} and "acme-notifier" in holders, key
        assert "acme-admin" not in holders or key == notify_keys.HELD_SET, key
    bucket = f"{RATE_LIMIT_PREFIX}key:3f9c2a7b1d04"
    assert {name for name, user in USER.items() if _may(user, bucket)} == {"acme-api"}


def test_every_shard_pattern_is_shard_0s_name_with_the_shard_tags() -> None:
    """`{acme}:events` -> `{acme*}:events`; a name without the tag is refused."""
    assert SHARD_TAGS == "{acme*}"
    assert every_shard(shard(0).events) == "{acme*}:events"
    with pytest.raises(ValueError, match="tag"):
        every_shard("other:events")


def test_acl_rules_reset_the_user_and_carry_only_the_password_hash() -> None:
    """`reset` first, so a dropped rule is dropped on the server; the password as SHA-256."""
    rules = acl_rules(USER["acme-api"], "a-secret-password-123")
    assert rules[:2] == ["reset", "on"]
    assert f"#{hashlib.sha256(b'a-secret-password-123').hexdigest()}" in rules
    assert not any("a-secret-password-123" in rule for rule in rules)
    assert "-@all" in rules and "+xadd" in rules and "~{acme*}:events" in rules


def test_every_table_a_migration_creates_is_granted() -> None:
    """A new table that no role is granted would fail its service at its first query."""
    created: set[str] = set()
    for sql in (SRC / "acme_orders" / "migrations").glob("*.sql"):
        created |= set(_CREATES.findall(sql.read_text(encoding="utf-8")))
    for sql in (SRC / "acme_notify" / "migrations").glob("*.sql"):
        created |= set(_CREATES.findall(sql.read_text(encoding="utf-8")))
    assert {"orders", "notify.sent_ledger"} <= created
    assert created <= set(managed_tables()), sorted(created - set(managed_tables()))


def test_no_role_writes_what_another_service_owns() -> None:
    """The notifier names no order table, the order service no notify.* table."""
    by_name = {role.name: {table for table, _ in role.tables} for role in ROLES}
    assert not any(t.startswith("notify.") for t in by_name["acme_orders"])
    assert all(t.startswith("notify.") for t in by_name["acme_notifier"])


def test_the_verifier_has_postgresqls_format_and_a_fresh_salt() -> None:
    """SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>, salted anew each time."""
    one, two = scram_verifier("x" * 20), scram_verifier("x" * 20)
    b64 = "[A-Za-z0-9+/=]"
    assert re.fullmatch(rf"SCRAM-SHA-256\$4096:{b64}{{24}}\${b64}{{44}}:{b64}{{44}}", one)
    assert one != two


def test_passwords_come_from_the_variable_or_its_file_and_are_never_echoed(
    tmp_path: Path,
) -> None:
    """Variable or _FILE (trailing newline dropped); both, or a weak one, is an error that
    names the variable and not the value."""
    name = "ACME_ACL_PG_ORDERS_PASSWORD"
    secret = "s3cret-Value-0123456789"
    (tmp_path / "pw").write_text(secret + "\n")
    assert read_password(EnvReader({name: secret}), name) == secret
    assert read_password(EnvReader({f"{name}_FILE": str(tmp_path / "pw")}), name) == secret
    assert read_password(EnvReader({}), name) is None
    for env in (
        {name: secret, f"{name}_FILE": str(tmp_path / "pw")},
        {name: "short-one"},
        {name: "with a space 0123456789"},
        {f"{name}_FILE": str(tmp_path / "missing")},
    ):
        with pytest.raises(SettingsError) as error:
            read_password(EnvReader(env), name)
        assert name in str(error.value)
        assert secret not in str(error.value) and "short-one" not in str(error.value)
