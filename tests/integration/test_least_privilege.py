"""One credential per service, on real Redis and PostgreSQL: after `acme setup-acl`, each
service does its whole job with its own credential (an order placed, published, dead-lettered,
archived, replayed, purged and sent) and is refused everything else (NOPERM, `permission
denied`). ADR 0020, docs/security.md "Credentials: one per service".

The embedded PostgreSQL trusts local connections, so these tests prove privileges, not
passwords; that the password is stored as the right SCRAM verifier is proved against
PostgreSQL's own computation.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError, ResponseError

from acme_cli.acl.command import setup_acl
from acme_cli.acl.pg_roles import ROLES, scram_verifier
from acme_cli.acl.redis_users import FORBIDDEN, USERS
from acme_cli.migrations import migrate
from acme_cli.smtp_sink import MailSink
from acme_notify.archiver import Archiver
from acme_notify.dead_archive import DeadArchive
from acme_notify.keys import ARCHIVER_LOCK, BREAKER_KEY, LAST_ERROR_HASH, REAPER_LOCK
from acme_notify.ledger import LEDGER_TABLE
from acme_orders.api_keys import issue_key
from acme_orders.app import api_app
from acme_orders.ratelimit import RATE_LIMIT_PREFIX
from acme_orders.settings import OrdersSettings
from acme_orders.store import TIMELINE_TABLE
from acme_orders.telemetry import OrdersMetrics
from acme_runtime.channels import DEAD_STREAM, EVENTS_STREAM, RECEIPTS_STREAM, published_key
from acme_runtime.partitions import list_partitions, maintain
from acme_runtime.pg import init_connection
from tests.harness import eventually, notify_settings, running_order_workers, running_replica
from tests.integration.test_admin_dead import acme
from tests.integration.test_api import ORDER

MINUTE_MS = 60_000
PASSWORDS = {
    **{user.name: f"{user.name}-pw-0123456789abcdef" for user in USERS},
    **{role.name: f"{role.name}-pw-0123456789abcdef" for role in ROLES},
}


def with_login(url: str, user: str) -> str:
    """`url` logging in as `user` with its test password."""
    parts = urlsplit(url)
    netloc = f"{quote(user)}:{quote(PASSWORDS[user])}@{parts.hostname}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class Credentials:
    redis_url: str
    database_url: str
    printed: tuple[str, ...]

    def redis(self, user: str) -> str:
        return with_login(self.redis_url, user)

    def pg(self, role: str) -> str:
        return with_login(self.database_url, role)


@pytest.fixture
async def creds(database_url: str, redis_url: str) -> Credentials:
    """Every user and role made by setup-acl in this test's Redis and database."""
    printed: list[str] = []
    await setup_acl(
        redis_url=redis_url,
        database_url=database_url,
        redis_passwords={user.name: PASSWORDS[user.name] for user in USERS},
        pg_passwords={role.name: PASSWORDS[role.name] for role in ROLES},
        out=printed.append,
    )
    return Credentials(redis_url, database_url, tuple(printed))


@asynccontextmanager
async def redis_as(creds: Credentials, user: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(creds.redis(user))
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def pool_as(creds: Credentials, role: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(creds.pg(role), min_size=1, max_size=3, init=init_connection)
    try:
        yield pool
    finally:
        await pool.close()


#: What Redis 7+ answers DEBUG with while enable-debug-command is "no" (its default).
DEBUG_DISABLED = "DEBUG command not allowed"


async def assert_acl_refuses(creds: Credentials, user: str, command: tuple[str, ...]) -> None:
    """The ACL denies `user` the command (ACL DRYRUN, Redis 7+), whatever the server's config."""
    admin = Redis.from_url(creds.redis_url, decode_responses=True)
    try:
        verdict = await admin.execute_command("ACL", "DRYRUN", user, *command)
    finally:
        await admin.aclose()
    assert verdict != "OK" and "no permissions" in str(verdict), verdict


def assert_refused(exc: BaseException) -> None:
    """NOPERM for a command, or a script's command or key the user may not run or touch."""
    assert isinstance(exc, ResponseError), repr(exc)
    text = str(exc)
    assert isinstance(exc, NoPermissionError) or "can't" in text or "NOPERM" in text, text


async def test_setup_acl_is_idempotent_and_never_prints_a_secret(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    redis_url: str,
    redis: Redis,
    database_url: str,
) -> None:
    """Run twice from env and _FILE passwords: users and roles created, then updated; nothing
    secret in the output; roles with a SCRAM verifier and no powers; no forbidden command."""
    monkeypatch.setenv("ACME_REDIS_URL", redis_url)
    monkeypatch.setenv("ACME_DATABASE_URL", database_url)
    for user in USERS:
        monkeypatch.setenv(user.password_env, PASSWORDS[user.name])
    for role in ROLES:
        monkeypatch.setenv(role.password_env, PASSWORDS[role.name])
    # One from a file, as a mounted Secret gives it.
    monkeypatch.delenv("ACME_ACL_PG_ADMIN_PASSWORD")
    (tmp_path / "admin").write_text(PASSWORDS["acme_admin"] + "\n")
    monkeypatch.setenv("ACME_ACL_PG_ADMIN_PASSWORD_FILE", str(tmp_path / "admin"))
    for user in USERS:  # the first run creates them (roles may exist from an earlier test)
        await redis.execute_command("ACL", "DELUSER", user.name)
    code, first, err = await acme(capsys, "setup-acl")
    assert code == 0, err
    code, second, err = await acme(capsys, "setup-acl")
    assert code == 0, err
    for user in USERS:
        assert f"redis: {user.name}: created" in first
        assert f"redis: {user.name}: updated" in second
    for role in ROLES:
        assert f"postgres: role {role.name}: updated" in second
        assert f"postgres: role {role.name}: privileges set on" in second
    for secret in PASSWORDS.values():
        assert secret not in first + second + err
    assert "SCRAM" not in first + second and "#" not in first + second

    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT rolname, rolpassword, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls"
            " FROM pg_authid WHERE rolname = ANY($1)",
            [role.name for role in ROLES],
        )
    finally:
        await conn.close()
    assert len(rows) == len(ROLES)
    for row in rows:
        assert row["rolpassword"].startswith("SCRAM-SHA-256$4096:"), row["rolname"]
        assert not any(row[p] for p in ("rolsuper", "rolcreaterole", "rolcreatedb")), row
    for user in USERS:
        info: Any = await redis.acl_getuser(user.name)  # its commands, split from categories
        # Redis describes the rules in its own words (`-@all +@stream -xgroup ...`): expand
        # its categories, then apply its single-command rules, in order.
        assert info["categories"][0] == "-@all", user.name
        granted: set[str] = set()
        for category in info["categories"][1:]:
            assert category.startswith("+@"), (user.name, category)
            granted |= {str(c) for c in await redis.acl_cat(category[2:])}
        for rule in info["commands"]:
            if rule.startswith("+"):
                granted.add(rule[1:].split("|")[0])
            elif "|" not in rule:
                granted.discard(rule[1:])
        assert not granted & FORBIDDEN, (user.name, granted & FORBIDDEN)


async def test_roles_made_before_the_schema_get_its_tables_from_acme_migrate(
    empty_database_url: str,
) -> None:
    """setup-acl on an empty database grants nothing yet; `acme migrate` then grants each role
    the tables it creates, so the order of the two steps does not matter."""
    printed: list[str] = []
    await setup_acl(
        redis_url=None,
        database_url=empty_database_url,
        redis_passwords={},
        pg_passwords={role.name: PASSWORDS[role.name] for role in ROLES},
        out=printed.append,
    )
    assert "postgres: role acme_notifier: privileges set on 0 of 2 tables" in " ".join(printed)
    await migrate(empty_database_url)
    checks = {
        "acme_orders": "SELECT count(*) FROM orders",
        "acme_notifier": "SELECT count(*) FROM notify.sent_ledger",
        "acme_admin": "SELECT count(*) FROM notify.dead_letters",
    }
    for role, query in checks.items():
        conn = await asyncpg.connect(with_login(empty_database_url, role))
        try:
            assert await conn.fetchval(query) == 0, role
        finally:
            await conn.close()


async def test_the_verifier_is_the_one_postgresql_computes(database_url: str) -> None:
    """scram_verifier, given PostgreSQL's salt and iteration count, yields PostgreSQL's own
    verifier of the same password: a client-side hash logs in like a plain password."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SET password_encryption = 'scram-sha-256'")
        await conn.execute("DROP ROLE IF EXISTS acme_lp_probe")
        await conn.execute("CREATE ROLE acme_lp_probe PASSWORD 'Plain-Pa55word-for-scram!'")
        stored: str = await conn.fetchval(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'acme_lp_probe'"
        )
        await conn.execute("DROP ROLE acme_lp_probe")
    finally:
        await conn.close()
    iterations, salt = stored.split("$")[1].split(":")
    computed = scram_verifier(
        "Plain-Pa55word-for-scram!", salt=base64.b64decode(salt), iterations=int(iterations)
    )
    assert computed == stored


#: Every credential is refused these, whatever its job.
COMMON_REFUSED: list[tuple[str, ...]] = [
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("CONFIG", "GET", "maxmemory"),
    ("KEYS", "*"),
    ("ACL", "LIST"),
    ("SCRIPT", "FLUSH"),
    ("DEBUG", "SLEEP", "0"),
    ("MODULE", "LIST"),
]
#: ... and these: another service's keys, or commands its job does not need.
REDIS_REFUSED: dict[str, list[tuple[str, ...]]] = {
    "acme-api": [
        ("XRANGE", DEAD_STREAM, "-", "+"),
        ("XREADGROUP", "GROUP", "notifier", "x", "STREAMS", EVENTS_STREAM, ">"),
        ("GET", BREAKER_KEY),
        ("XDEL", EVENTS_STREAM, "1-1"),
        ("XADD", RECEIPTS_STREAM, "*", "type", "sent"),
    ],
    "acme-relay": [
        ("XRANGE", DEAD_STREAM, "-", "+"),
        ("XTRIM", EVENTS_STREAM, "MAXLEN", "0"),
        ("HSET", LAST_ERROR_HASH, "1-1", "x"),
        ("XGROUP", "DESTROY", RECEIPTS_STREAM, "orders"),
        ("DEL", EVENTS_STREAM),
    ],
    "acme-notifier": [
        ("GET", published_key("x")),
        ("SET", f"{RATE_LIMIT_PREFIX}key:x", "1"),
        ("XGROUP", "DESTROY", EVENTS_STREAM, "notifier"),
        ("DEL", EVENTS_STREAM),
        ("UNLINK", DEAD_STREAM),
    ],
    "acme-admin": [
        ("GET", REAPER_LOCK),
        ("SET", published_key("x"), "1"),
        ("XGROUP", "DESTROY", EVENTS_STREAM, "notifier"),
        ("XTRIM", EVENTS_STREAM, "MAXLEN", "0"),
        ("DEL", DEAD_STREAM),
    ],
    "acme-scaler": [
        ("XADD", EVENTS_STREAM, "*", "a", "b"),
        ("XRANGE", EVENTS_STREAM, "-", "+"),
        ("XLEN", DEAD_STREAM),
    ],
}


SCRIPT_PROBES: dict[str, str] = {
    "acme-api": f"return redis.call('XADD', '{DEAD_STREAM}', '*', 'a', 'b')",
    "acme-relay": f"return redis.call('XADD', '{DEAD_STREAM}', '*', 'a', 'b')",
    "acme-notifier": f"return redis.call('GET', '{published_key('x')}')",
    "acme-admin": f"return redis.call('XADD', '{published_key('x')}', '*', 'a', 'b')",
}


@pytest.mark.parametrize("user", sorted(REDIS_REFUSED))
async def test_each_redis_user_is_refused_what_is_not_its_job(
    creds: Credentials, user: str
) -> None:
    """FLUSHALL, CONFIG, KEYS, ACL, ... and the other services' keys and commands: NOPERM,
    also from inside a Lua script, which runs with its caller's permissions."""
    async with redis_as(creds, user) as client:
        assert await client.ping()
        for command in [*COMMON_REFUSED, *REDIS_REFUSED[user]]:
            with pytest.raises(ResponseError) as refused:
                await client.execute_command(*command)
            if command[0] == "DEBUG" and DEBUG_DISABLED in str(refused.value):
                # Redis 7 refuses DEBUG to everyone (enable-debug-command no) before the ACL
                # is asked: ask the ACL itself, as the default user.
                await assert_acl_refuses(creds, user, command)
                continue
            assert_refused(refused.value)
        if user in SCRIPT_PROBES:
            # A script may not do what its caller may not: a forbidden command, or a command
            # it has on a key outside its patterns (named in the source, not in KEYS, so that
            # the check inside the script, not EVAL's own, is what refuses it).
            for source in ("return redis.call('FLUSHALL')", SCRIPT_PROBES[user]):
                with pytest.raises(ResponseError) as refused:
                    await client.eval(source, 0)
                assert_refused(refused.value)


#: (role, statement) that PostgreSQL must refuse with `permission denied` (or `must be owner`).
PG_REFUSED: dict[str, list[str]] = {
    "acme_orders": [
        "SELECT 1 FROM notify.sent_ledger",
        "SELECT 1 FROM notify.dead_letters",
        "INSERT INTO api_keys (id) VALUES ('x')",
        "TRUNCATE outbox",
        "DROP TABLE outbox",
        "ALTER TABLE orders ADD COLUMN x int",
        "CREATE TABLE lp_probe (x int)",
    ],
    "acme_notifier": [
        "SELECT 1 FROM orders",
        "SELECT 1 FROM outbox",
        "SELECT 1 FROM api_keys",
        "UPDATE orders SET locale = 'x'",
        "DELETE FROM notify.sent_ledger",
        "DROP TABLE notify.sent_ledger_floor",
        "CREATE TABLE notify.lp_probe (x int)",
        "SELECT acme_partition_drop('order_timeline'::regclass, 'order_timeline_floor')",
    ],
    "acme_admin": [
        "UPDATE orders SET locale = 'x'",
        "DELETE FROM outbox",
        "INSERT INTO notify.sent_ledger (event_id) VALUES (gen_random_uuid())",
        "UPDATE notify.dead_letters SET reason_class = ''",
        "DELETE FROM api_keys",
        "CREATE TABLE lp_probe (x int)",
        "SELECT acme_partition_drop('order_timeline'::regclass, 'order_timeline_floor')",
    ],
}


@pytest.mark.parametrize("role", sorted(PG_REFUSED))
async def test_each_postgres_role_is_refused_the_other_services_tables(
    creds: Credentials, role: str
) -> None:
    """The notifier cannot touch orders, the API cannot read notify.*, the admin reads but does
    not rewrite orders; none can create, alter or drop a table, or another's partitions."""
    conn = await asyncpg.connect(creds.pg(role))
    try:
        for statement in PG_REFUSED[role]:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
    finally:
        await conn.close()


async def test_each_janitor_maintains_its_own_partitions_and_only_those(
    creds: Credentials,
) -> None:
    """As its service's role, each janitor creates partitions ahead and drops expired ones
    through the owner's functions; the other service's table is refused, and the functions
    touch nothing but a named partition of a partitioned table."""
    async with (
        pool_as(creds, "acme_orders") as orders,
        pool_as(creds, "acme_notifier") as notifier,
    ):
        for pool, table in ((orders, TIMELINE_TABLE), (notifier, LEDGER_TABLE)):
            # Past the last partition the template made: the round must create, then drop.
            top_ms = max(p.upper_ms for p in await list_partitions(pool, table))
            start = int(top_ms) + 10 * MINUTE_MS
            made = await maintain(pool, table, interval_s=60, retention_s=300, now_ms=start)
            assert made.created, table
            later = start + 20 * MINUTE_MS
            dropped = await maintain(pool, table, interval_s=60, retention_s=300, now_ms=later)
            assert dropped.dropped, table
        far = later + 24 * 60 * MINUTE_MS
        for pool, table in ((notifier, TIMELINE_TABLE), (orders, LEDGER_TABLE)):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await maintain(pool, table, interval_s=60, retention_s=300, now_ms=far)
        with pytest.raises(asyncpg.WrongObjectTypeError):
            await orders.execute(
                "SELECT acme_partition_create('orders'::regclass, 'orders_x', NULL, NULL)"
            )
        with pytest.raises(asyncpg.InvalidNameError):
            await orders.execute(
                "SELECT acme_partition_create('order_timeline'::regclass, 'evil', NULL, NULL)"
            )
        with pytest.raises(asyncpg.UndefinedTableError):
            await orders.execute("SELECT acme_partition_drop('order_timeline'::regclass, 'outbox')")


async def dead_ids_by_order(redis: Redis) -> dict[str, str]:
    entries: Any = await redis.xrange(DEAD_STREAM)
    return {fields[b"order_id"].decode(): dead_id.decode() for dead_id, fields in entries}


async def test_every_service_does_its_whole_job_with_its_own_credential(
    creds: Credentials,
    sink: MailSink,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """API (acme-api, acme_orders), relay (acme-relay, acme_orders), notifier (acme-notifier,
    acme_notifier), admin CLI (acme-admin, acme_admin): orders placed, rate-limited, published,
    refused by SMTP and dead-lettered, one archived, replayed from the archive and sent, the
    other purged; an API key made, stats and trace read. Nothing runs with a broader credential."""
    monkeypatch.setenv("ACME_REDIS_URL", creds.redis("acme-admin"))
    monkeypatch.setenv("ACME_DATABASE_URL", creds.pg("acme_admin"))
    monkeypatch.setenv("ACME_OPERATOR", "lp-tester@host")
    # What `acme keys create` runs, as the admin role.
    key = await issue_key(creds.pg("acme_admin"), name="least-privilege", operator="lp-tester")

    fast = {
        "ACME_RELAY_POLL_MS": "50",
        "ACME_RELAY_GRACE_MS": "100",
        "ACME_FAST_PATH_PAUSE_MS": "200",
        "ACME_CONSUMER_NAME": "lp-orders",
    }
    orders_pg = creds.pg("acme_orders")
    api_settings = OrdersSettings.from_env(
        {**fast, "ACME_DATABASE_URL": orders_pg, "ACME_REDIS_URL": creds.redis("acme-api")}
    )
    relay_settings = OrdersSettings.from_env(
        {**fast, "ACME_DATABASE_URL": orders_pg, "ACME_REDIS_URL": creds.redis("acme-relay")}
    )
    notifier = notify_settings(creds.pg("acme_notifier"), creds.redis("acme-notifier"), sink.url)
    metrics = OrdersMetrics()
    sink.policy = lambda _e: "550 5.1.1 mailbox unknown"
    async with (
        AsyncTestClient(app=api_app(api_settings, metrics)) as api,
        running_order_workers(relay_settings),
        running_replica(notifier),
    ):
        api.headers["Authorization"] = f"Bearer {key}"
        placed = [await api.post("/orders", json=ORDER) for _ in range(2)]
        assert [r.status_code for r in placed] == [201, 201]
        assert "ratelimit" in {name.lower() for name in placed[0].headers}
        first, second = (r.json()["id"] for r in placed)

        async def status(order_id: str) -> str:
            body = (await api.get(f"/orders/{order_id}")).json()
            return str(body["notification"]["status"])

        async def both_dead() -> bool:
            return [await status(first), await status(second)] == ["dead", "dead"]

        await eventually(both_dead, what="both orders dead-lettered")
        dead = await dead_ids_by_order(redis)

        # The notifier's archiver moves the older dead letter to PostgreSQL. The replica's own
        # archiver took the lock at its start and holds it for its 10 s interval: let it go.
        await redis.delete(ARCHIVER_LOCK)
        async with (
            redis_as(creds, "acme-notifier") as notifier_redis,
            pool_as(creds, "acme_notifier") as notifier_pool,
        ):
            archiver = Archiver(
                notifier_redis,
                DeadArchive(notifier_pool),
                owner="lp",
                max_entries=1,
                retention_s=86_400,
                archive_retention_s=86_400,
            )
            await archiver.archive_round()
        still_in_stream = await dead_ids_by_order(redis)
        [archived] = [o for o in (first, second) if o not in still_in_stream]
        [kept] = list(still_in_stream)

        sink.policy = None
        # (Its output shares stdout with the replica's logs: the outcome is checked below.)
        code, _out, err = await acme(
            capsys, "dead", "replay", dead[archived], "--yes", "--why", "lp"
        )
        assert code == 0, err
        code, _out, err = await acme(capsys, "dead", "purge", dead[kept], "--yes", "--why", "lp")
        assert code == 0, err

        async def archived_sent() -> bool:
            return await status(archived) == "sent"

        await eventually(archived_sent, what="the replayed order sent")
    for argv in (["stats", "--json"], ["trace", archived], ["dead", "list"]):
        code, _out, err = await acme(capsys, *argv)
        assert code == 0, (argv, err)
    assert await redis.xlen(DEAD_STREAM) == 0
    # Neither path fell back silently: the rate limit answered (no fail-open), and the fast
    # path published with the API's credential.
    assert metrics.registry.get_sample_value("acme_api_rate_limit_fail_open_total") == 0
    fast_path = metrics.registry.get_sample_value(
        "acme_events_published_total", {"path": "fast_path"}
    )
    assert fast_path and fast_path >= 2
