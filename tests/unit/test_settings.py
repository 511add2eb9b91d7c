"""Settings are read once, typed, and refused at start when they would allow a double send."""

from __future__ import annotations

import re
import ssl
from typing import Annotated

import msgspec
import pytest
from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection

from acme_cli.admin.settings import AdminSettings
from acme_notify.settings import NotifySettings
from acme_orders.settings import OrdersSettings
from acme_runtime.env import (
    Env,
    EnvReader,
    SettingsError,
    default_helo_name,
    load_settings,
    redact_url,
    settings_fields,
)

URLS = {
    "ACME_REDIS_URL": "redis://127.0.0.1:6379/0",
    "ACME_DATABASE_URL": "postgresql://acme@127.0.0.1:5432/acme",
    "ACME_SMTP_URL": "smtp://127.0.0.1:2525",
}


def notify(**env: str) -> NotifySettings:
    return NotifySettings.from_env({**URLS, **env})


def test_the_defaults_keep_every_invariant() -> None:
    """With nothing set but the URLs, a notifier starts."""
    settings = notify()
    assert settings.heartbeat_interval_ms * 3 <= settings.backoff_base_ms * 2
    assert settings.grace_s > settings.smtp_timeout_s


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ACME_HEARTBEAT_INTERVAL_MS": "5000"}, "ACME_HEARTBEAT_INTERVAL_MS"),
        ({"ACME_BACKOFF_BASE_MS": "2500"}, "ACME_BACKOFF_BASE_MS"),
        ({"ACME_SMTP_TIMEOUT_S": "20"}, "ACME_NOTIFY_GRACE_S"),
        ({"ACME_NOTIFY_GRACE_S": "10"}, "ACME_SMTP_TIMEOUT_S"),
        ({"ACME_BACKOFF_MAX_MS": "1000"}, "ACME_BACKOFF_BASE_MS"),
        ({"ACME_BREAKER_MAX_COOLDOWN_S": "1"}, "ACME_BREAKER_COOLDOWN_S"),
        ({"ACME_SMTP_STORM_SHARE": "1.5"}, "ACME_SMTP_STORM_SHARE"),
        ({"ACME_SMTP_HELO_NAME": "not a host"}, "ACME_SMTP_HELO_NAME"),
        ({"ACME_SMTP_FALLBACK_URL": URLS["ACME_SMTP_URL"]}, "ACME_SMTP_FALLBACK_URL"),
        ({"ACME_SMTP_FALLBACK_URL": "http://relay.example"}, "ACME_SMTP_FALLBACK_URL"),
    ],
)
def test_settings_that_could_send_twice_are_refused_naming_the_variables(
    env: dict[str, str], named: str
) -> None:
    """A heartbeat slower than the first backoff, a drain shorter than a send, and the like."""
    with pytest.raises(SettingsError, match=named):
        notify(**env)


def test_the_heartbeat_may_come_close_to_the_first_backoff_but_not_reach_it() -> None:
    """2/3 of the backoff is the limit: 300 ms against 450 ms starts, 301 ms does not."""
    assert notify(ACME_HEARTBEAT_INTERVAL_MS="300", ACME_BACKOFF_BASE_MS="450")
    with pytest.raises(SettingsError):
        notify(ACME_HEARTBEAT_INTERVAL_MS="301", ACME_BACKOFF_BASE_MS="450")


@pytest.mark.parametrize(
    "name", ["notifier.acme.example", "mail-1.eu.acme.example.", "[192.0.2.7]"]
)
def test_a_host_name_or_an_address_literal_is_a_helo_name(name: str) -> None:
    """EHLO takes a domain name or an address literal."""
    assert notify(ACME_SMTP_HELO_NAME=name).smtp_helo_name == name


def test_the_default_helo_name_is_a_valid_host_name() -> None:
    """Whatever the host calls itself, the default is a name EHLO can carry."""
    assert notify().smtp_helo_name == default_helo_name()
    assert " " not in default_helo_name()


def test_a_dedupe_key_shorter_than_the_redrive_delay_is_refused() -> None:
    """A re-drive must never publish an event whose publish-once key has expired in flight."""
    base = {k: v for k, v in URLS.items() if k != "ACME_SMTP_URL"}
    with pytest.raises(SettingsError, match="ACME_DEDUPE_TTL_S"):
        OrdersSettings.from_env({**base, "ACME_REDRIVE_AFTER_S": "600", "ACME_DEDUPE_TTL_S": "600"})
    assert OrdersSettings.from_env({**base, "ACME_REDRIVE_AFTER_S": "60"})


def test_a_fallback_provider_is_optional_and_has_its_own_limits() -> None:
    """No fallback by default; with one, its pool, rate and alert delay are its own."""
    assert notify().smtp_fallback_url is None
    settings = notify(
        ACME_SMTP_FALLBACK_URL="smtps://user:secret@other.example:465",
        ACME_SMTP_FALLBACK_POOL_SIZE="4",
        ACME_SMTP_FALLBACK_RATE_PER_S="20",
    )
    assert settings.smtp_fallback_url == "smtps://user:secret@other.example:465"
    assert (settings.smtp_fallback_pool_size, settings.smtp_fallback_rate_per_s) == (4, 20.0)
    assert settings.smtp_fallback_alert_after_s == 900.0


# -- URLs: every form the client libraries accept --------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@/acme?host=/run/postgresql",
        "postgres://acme:secret@/acme?host=/var/run/postgresql&port=5433",
        "postgresql:///acme",
        "postgresql://%2Frun%2Fpostgresql/acme",
        "postgresql://acme@db-1:5432,db-2:5433/acme?target_session_attrs=read-write",
        "postgresql://acme@[2001:db8::1]:5432/acme",
    ],
)
def test_libpq_url_forms_asyncpg_accepts_are_accepted(url: str) -> None:
    """A unix socket in `?host=`, the default socket, an encoded path, several hosts, IPv6."""
    assert notify(ACME_DATABASE_URL=url).database_url == url
    orders = OrdersSettings.from_env({"ACME_DATABASE_URL": url, "ACME_REDIS_URL": "unix:///r.sock"})
    assert (orders.database_url, orders.redis_url) == (url, "unix:///r.sock")
    assert AdminSettings.from_env({"ACME_DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize(
    "url",
    [
        "rediss://acme-api:pw@redis.acme.svc:6380/0?ssl_ca_certs=/etc/acme/tls/ca.crt",
        "rediss://redis:6380/0?ssl_ca_certs=/ca.crt&ssl_certfile=/tls.crt&ssl_keyfile=/tls.key",
        "rediss://redis:6380/0?ssl_ca_path=/etc/ssl/certs&ssl_min_version=4",
        "rediss://redis.example.com:6380",
        "rediss://redis:6380/0?ssl_cert_reqs=none",
    ],
)
async def test_rediss_url_forms_redis_py_accepts_are_accepted(url: str) -> None:
    """rediss:// with redis-py's TLS parameters (CA, client certificate, opting out) loads,
    and redis-py builds a TLS client from it that checks the certificate and the host name
    unless ssl_cert_reqs=none says otherwise."""
    orders = OrdersSettings.from_env({**URLS, "ACME_REDIS_URL": url})
    assert notify(ACME_REDIS_URL=url).redis_url == orders.redis_url == url
    assert AdminSettings.from_env({"ACME_REDIS_URL": url}).redis_url == url
    client = Redis.from_url(url)
    try:
        pool = client.connection_pool
        assert pool.connection_class is SSLConnection
        # What the connection will build its SSLContext from (built at connect: no CA read here).
        context = pool.make_connection().ssl_context
        verified = "ssl_cert_reqs=none" not in url
        assert (context.cert_reqs == ssl.CERT_REQUIRED, context.check_hostname) == (verified,) * 2
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://acme:pw@db.acme.svc:5432/acme?sslmode=verify-full&sslrootcert=/ca.crt",
        "postgresql://acme@db:5432/acme?sslmode=verify-full&sslrootcert=/ca.crt"
        "&sslcert=/tls.crt&sslkey=/tls.key&sslpassword=s3cret",
        "postgres://acme@db-1:5432,db-2:5432/acme?sslmode=verify_full&sslrootcert=/ca.crt",
        "postgresql://acme@db/acme?sslmode=require",
        "postgresql://acme@db/acme?sslmode=disable",
    ],
)
def test_libpq_tls_url_forms_asyncpg_accepts_are_accepted(url: str) -> None:
    """sslmode (libpq's spelling or asyncpg's verify_full), sslrootcert and a client
    certificate pass through as written."""
    assert notify(ACME_DATABASE_URL=url).database_url == url
    assert AdminSettings.from_env({"ACME_DATABASE_URL": url}).database_url == url


@pytest.mark.parametrize(
    ("name", "url", "message"),
    [
        ("ACME_SMTP_URL", "smtp://:2525", "ACME_SMTP_URL: no host in 'smtp://:2525'"),
        ("ACME_REDIS_URL", "redis://:pw@/0", "ACME_REDIS_URL: no host in 'redis://:***@/0'"),
        (
            "ACME_DATABASE_URL",
            "postgresql://u:pw@db-1:5432,db-2:x/acme",
            "ACME_DATABASE_URL: bad port in 'postgresql://u:***@db-1:5432,db-2:x/acme': "
            "Port could not be cast to integer value as 'x'",
        ),
        (
            "ACME_REDIS_URL",
            "redis://:pw@h:99999",
            "ACME_REDIS_URL: bad port in 'redis://:***@h:99999': Port out of range 0-65535",
        ),
        (
            "ACME_DATABASE_URL",
            "mysql://u:pw@h/acme",
            "ACME_DATABASE_URL: expected a URL starting with postgresql://, postgres://, "
            "got 'mysql://u:***@h/acme'",
        ),
        (
            "ACME_REDIS_URL",
            "redis://:pw@redis:6379/0?ssl_ca_certs=/ca.crt",
            "ACME_REDIS_URL: ssl_ca_certs given, but only rediss:// connects over TLS, in "
            "'redis://:***@redis:6379/0?ssl_ca_certs=/ca.crt'",
        ),
        (
            "ACME_REDIS_URL",
            "rediss://:pw@redis:6380/0?ssl_cert_reqs=yes&ssl_password=s3cret",
            "ACME_REDIS_URL: ssl_cert_reqs must be one of none, optional, required, in "
            "'rediss://:***@redis:6380/0?ssl_cert_reqs=yes&ssl_password=***'",
        ),
        (
            "ACME_DATABASE_URL",
            "postgresql://u:pw@db/acme?sslmode=verify-host&sslpassword=s3cret",
            "ACME_DATABASE_URL: sslmode must be one of disable, allow, prefer, require, "
            "verify-ca, verify-full, in "
            "'postgresql://u:***@db/acme?sslmode=verify-host&sslpassword=***'",
        ),
    ],
)
def test_urls_their_library_would_refuse_are_refused_with_the_password_hidden(
    name: str, url: str, message: str
) -> None:
    """SMTP and Redis TCP URLs need a host; every port must parse; the scheme must fit; TLS
    options must be ones the library takes, on a scheme that uses TLS."""
    with pytest.raises(SettingsError) as caught:
        notify(**{name: url})
    assert str(caught.value) == message


def test_required_urls_name_the_first_missing_and_how_to_get_one() -> None:
    """An unset required URL is one line naming it and pointing at `acme up`."""
    with pytest.raises(SettingsError) as caught:
        NotifySettings.from_env({k: v for k, v in URLS.items() if k != "ACME_SMTP_URL"})
    assert str(caught.value) == ("ACME_SMTP_URL: not set (or run `acme up` for an embedded stack)")
    with pytest.raises(SettingsError, match=r"^ACME_DATABASE_URL: not set \(or run `acme up`"):
        OrdersSettings.from_env({})


def test_a_redacted_url_hides_every_password_and_keeps_the_rest_as_written() -> None:
    """User-info, `password=` and client-key passphrase parameters; several hosts and IPv6
    brackets survive."""
    assert redact_url("postgresql://u:pw@H1:5432,h2:5433/db?password=x&sslmode=require") == (
        "postgresql://u:***@H1:5432,h2:5433/db?password=***&sslmode=require"
    )
    assert redact_url("redis://:pw@[::1]:6379/0") == "redis://:***@[::1]:6379/0"
    assert redact_url("smtp://relay.example:25") == "smtp://relay.example:25"
    assert redact_url("rediss://h:6380/0?ssl_keyfile=/k&ssl_password=pw") == (
        "rediss://h:6380/0?ssl_keyfile=/k&ssl_password=***"
    )
    assert redact_url("postgresql://h/db?sslkey=/k&SSLPASSWORD=pw") == (
        "postgresql://h/db?sslkey=/k&SSLPASSWORD=***"
    )


# -- the generic loader ------------------------------------------------------------------------


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    url: Annotated[str, Env("X_URL", "a required URL", schemes=("redis",))]
    count: Annotated[int, Env("X_COUNT", "an int with bounds", minimum=10, maximum=20)] = 15
    ratio_s: Annotated[float, Env("X_RATIO_S", "a float with a floor", minimum=0.5)] = 1.0
    level: Annotated[str, Env("X_LEVEL", "a keyword", choices=("low", "high"))] = "low"
    on: Annotated[bool, Env("X_ON", "a switch")] = False
    peer: Annotated[str | None, Env("X_PEER", "an optional URL", schemes=("smtp",))] = None
    name: Annotated[
        str, Env("X_NAME", "a computed default", default_from=lambda env: f"{env.raw('X_URL')}!")
    ] = "unused"


def sample(**env: str) -> Sample:
    return load_settings(Sample, {"X_URL": "redis://h", **env}, unset_hint="or set it")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"X_URL": " "}, "X_URL: not set (or set it)"),
        ({"X_COUNT": "ten"}, "X_COUNT: expected an integer, got 'ten'"),
        ({"X_COUNT": "9"}, "X_COUNT: must be at least 10 and at most 20, got 9"),
        ({"X_COUNT": "21"}, "X_COUNT: must be at least 10 and at most 20, got 21"),
        ({"X_RATIO_S": "fast"}, "X_RATIO_S: expected a number, got 'fast'"),
        ({"X_RATIO_S": "nan"}, "X_RATIO_S: must be a number of at least 0.5, got 'nan'"),
        ({"X_RATIO_S": "0.1"}, "X_RATIO_S: must be a number of at least 0.5, got '0.1'"),
        ({"X_LEVEL": "mid"}, "X_LEVEL: expected one of low, high, got 'mid'"),
        ({"X_ON": "maybe"}, "X_ON: expected true/false, got 'maybe'"),
        ({"X_PEER": "http://h"}, "X_PEER: expected a URL starting with smtp://, got 'http://h'"),
    ],
)
def test_the_loader_refuses_a_bad_value_in_one_line_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    """Each kind of mistake is a SettingsError whose whole message is one line."""
    with pytest.raises(SettingsError) as caught:
        sample(**env)
    assert str(caught.value) == message


def test_the_loader_converts_and_leaves_unset_fields_at_their_defaults() -> None:
    """Values are stripped, typed and normalised; unset ones keep the Struct's defaults."""
    assert sample() == Sample(url="redis://h", name="redis://h!")
    loaded = sample(X_COUNT=" 20 ", X_RATIO_S="0.5", X_LEVEL="HIGH", X_ON="yes", X_PEER="smtp://p")
    assert (loaded.count, loaded.ratio_s, loaded.level, loaded.on) == (20, 0.5, "high", True)
    assert (loaded.peer, sample(X_NAME="given").name) == ("smtp://p", "given")


def test_computed_defaults_are_computed_when_the_settings_load() -> None:
    """The consumer name follows HOSTNAME at load time; the operator follows USER."""
    env = {**URLS, "HOSTNAME": "notifier-7f9c"}
    assert NotifySettings.from_env(env).consumer_name.startswith("notifier-7f9c-")
    admin = AdminSettings.from_env({"USER": "ana", "HOSTNAME": "bastion"})
    assert admin.operator == "ana@bastion"
    assert AdminSettings.from_env({"ACME_OPERATOR": "bob"}).operator == "bob"
    assert default_helo_name(EnvReader({})) == default_helo_name()


class Undeclared(msgspec.Struct, frozen=True):
    port: int = 1


class Misdeclared(msgspec.Struct, frozen=True):
    port: Annotated[int, Env("X_PORT", "a port", choices=("1", "2"))] = 1


class FloatBoundOnInt(msgspec.Struct, frozen=True):
    port: Annotated[int, Env("X_PORT", "a port", minimum=0.5)] = 1


@pytest.mark.parametrize(
    ("cls", "problem"),
    [
        (Undeclared, "Undeclared.port: no Env(...) in the annotation"),
        (Misdeclared, "Misdeclared.port: schemes, choices, hostname and default_from apply to str"),
        (FloatBoundOnInt, "FloatBoundOnInt.port: an int field's bounds are ints"),
    ],
)
def test_a_field_declared_wrongly_is_a_type_error_naming_it(
    cls: type[msgspec.Struct], problem: str
) -> None:
    """A programming mistake in the declarations fails loudly, not as a settings error."""
    with pytest.raises(TypeError, match=re.escape(problem)):
        settings_fields(cls)


# -- the declarations themselves ---------------------------------------------------------------

ALL_SETTINGS = (NotifySettings, OrdersSettings, AdminSettings)
_UNIT = re.compile(r"_(ms|s|bytes|per_s)$")


@pytest.mark.parametrize("cls", ALL_SETTINGS)
def test_every_setting_is_documented_and_its_variable_carries_its_unit(
    cls: type[msgspec.Struct],
) -> None:
    """Each field has a doc, an ACME_* variable, and a unit suffix the variable repeats."""
    for field in settings_fields(cls):
        assert field.env.doc.strip(), field.name
        assert field.env.var.startswith("ACME_"), field.name
        unit = _UNIT.search(field.name)
        if unit:
            assert field.env.var.endswith(unit.group().upper()), field.name


def test_a_variable_read_by_two_services_means_the_same_there() -> None:
    """ACME_METRICS_PORT, ACME_LOG_LEVEL and the like have one default and one set of bounds."""
    seen: dict[str, tuple[object, ...]] = {}
    for cls in (NotifySettings, OrdersSettings):
        for field in settings_fields(cls):
            env = field.env
            default = field.default if env.default_from is None else "computed"
            meaning = (field.kind, env.minimum, env.maximum, env.choices, env.schemes, default)
            assert seen.setdefault(env.var, meaning) == meaning, env.var
