"""Settings are read once, typed, and refused at start when they would allow a double send."""

from __future__ import annotations

import pytest

from acme_notify.settings import NotifySettings
from acme_orders.settings import OrdersSettings
from acme_runtime.env import SettingsError, default_helo_name

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
