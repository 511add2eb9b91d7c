"""SMTP failure classification, relay URL parsing, the circuit breaker and the token bucket."""

from __future__ import annotations

import asyncio
import errno
import ssl

import aiosmtplib
import pytest

from acme_notify.errors import PermanentError, ProviderError, TransientError
from acme_notify.flow import CircuitBreaker, TokenBucket
from acme_notify.smtp import SmtpConfig, classify

PEER = "127.0.0.1:2525"


def _connect_error(cause: OSError) -> aiosmtplib.SMTPConnectError:
    # How aiosmtplib reports a failed connect: the OS error rides along as the cause.
    exc = aiosmtplib.SMTPConnectError(f"Error connecting to 127.0.0.1 on port 2525: {cause}")
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "server_down", "reason"),
    [
        (aiosmtplib.SMTPDataError(421, "4.3.0 try later"), True, "421 4.3.0 try later"),
        (aiosmtplib.SMTPDataError(421, "Service not available"), True, "421 Service not"),
        (aiosmtplib.SMTPSenderRefused(450, "4.2.0 busy", "a@x.org"), False, "450 4.2.0 busy"),
        (aiosmtplib.SMTPDataError(451, "4.3.0 local error"), False, "451 4.3.0"),
        (aiosmtplib.SMTPRecipientRefused(452, "4.5.3 too many", "b@y.org"), False, "452 4.5.3"),
        (aiosmtplib.SMTPDataError(454, "TLS not available"), False, "454 TLS"),
        (aiosmtplib.SMTPDataError(550, "4.7.0 greylisted, come back"), False, "550 4.7.0"),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), True, "connection refused (127"),
        (_connect_error(ConnectionRefusedError(111, "x")), True, f"connection refused ({PEER})"),
        (aiosmtplib.SMTPServerDisconnected("Connection lost"), True, "connection lost"),
        (aiosmtplib.SMTPTimeoutError("Timed out"), True, "timed out"),
        (aiosmtplib.SMTPReadTimeoutError("Timed out waiting"), True, "timed out"),
        (aiosmtplib.SMTPConnectTimeoutError("Timed out connecting"), True, "timed out"),
        (TimeoutError(), True, "timed out"),
        (ssl.SSLError(1, "[SSL] wrong version number"), True, "tls error"),
        (_connect_error(ssl.SSLCertVerificationError(1, "bad cert")), True, "tls error"),
        (OSError(errno.EHOSTUNREACH, "No route to host"), True, "network error"),
        (aiosmtplib.SMTPHeloError(421, "4.3.2 shutting down"), True, "helo refused: 421"),
    ],
)
def test_transient_failures(exc: BaseException, server_down: bool, reason: str) -> None:
    """4xx replies, enhanced class 4, network, timeout, TLS and session failures are transient."""
    verdict = classify(exc, peer=PEER)
    assert isinstance(verdict, TransientError)
    assert not isinstance(verdict, ProviderError)
    assert verdict.server_down is server_down
    assert reason in verdict.reason


@pytest.mark.parametrize(
    ("exc", "reason_class", "reason"),
    [
        (
            aiosmtplib.SMTPRecipientRefused(550, "5.1.1 mailbox unknown", "b@y.org"),
            "invalid_recipient",
            "550 5.1.1 mailbox unknown",
        ),
        (aiosmtplib.SMTPDataError(550, "5.1.1 mailbox unknown"), "invalid_recipient", "550 5.1.1"),
        (
            aiosmtplib.SMTPRecipientsRefused(
                [aiosmtplib.SMTPRecipientRefused(550, "5.1.1 no such user", "b@y.org")]
            ),
            "invalid_recipient",
            "550 5.1.1 no such user",
        ),
        (
            aiosmtplib.SMTPRecipientRefused(553, "mailbox name not allowed", "b@y.org"),
            "invalid_recipient",
            "553 mailbox name not allowed",
        ),
        (aiosmtplib.SMTPDataError(553, "not allowed"), "smtp_permanent", "553 not allowed"),
        (aiosmtplib.SMTPDataError(554, "5.7.1 rejected as spam"), "smtp_permanent", "554 5.7.1"),
        (aiosmtplib.SMTPDataError(451, "5.7.1 policy says no"), "smtp_permanent", "451 5.7.1"),
        (aiosmtplib.SMTPDataError(452, "5.1.1 gone"), "invalid_recipient", "452 5.1.1"),
    ],
)
def test_permanent_failures(exc: BaseException, reason_class: str, reason: str) -> None:
    """5xx replies and enhanced class 5 (which beats the reply code) are permanent."""
    verdict = classify(exc)
    assert isinstance(verdict, PermanentError)
    assert verdict.reason_class == reason_class
    assert verdict.reason.startswith(reason)


def test_mixed_recipient_refusals_retry() -> None:
    """When one refused recipient may succeed later, the whole message is retried."""
    exc = aiosmtplib.SMTPRecipientsRefused(
        [
            aiosmtplib.SMTPRecipientRefused(550, "5.1.1 unknown", "a@y.org"),
            aiosmtplib.SMTPRecipientRefused(451, "4.3.0 later", "b@y.org"),
        ]
    )
    verdict = classify(exc)
    assert isinstance(verdict, TransientError)
    assert verdict.reason == "451 4.3.0 later"


def test_multiline_reply_keeps_first_line() -> None:
    """Only the first line of a long multi-line reply goes into the reason."""
    verdict = classify(aiosmtplib.SMTPDataError(550, "5.1.1 unknown\nsee https://help\nmore"))
    assert verdict.reason == "550 5.1.1 unknown"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.local:2525", ("mail.local", 2525, False, False, None, None)),
        ("smtp://mail.local", ("mail.local", 25, False, False, None, None)),
        (
            "smtp://us%40r:p%3Ass@relay.example:587?starttls=true",
            ("relay.example", 587, False, True, "us@r", "p:ss"),
        ),
        ("smtp://relay.example?starttls=true", ("relay.example", 587, False, True, None, None)),
        ("smtp://h:25?starttls=opportunistic", ("h", 25, False, None, None, None)),
        ("smtps://relay.example", ("relay.example", 465, True, False, None, None)),
        ("smtps://u:pw@[::1]:4650", ("::1", 4650, True, False, "u", "pw")),
    ],
)
def test_from_url(url: str, expected: tuple[object, ...]) -> None:
    """URLs map to host, port, implicit TLS, STARTTLS mode and percent-decoded credentials."""
    config = SmtpConfig.from_url(url, timeout_s=5.0, pool_size=2)
    actual = (
        config.host,
        config.port,
        config.use_tls,
        config.start_tls,
        config.username,
        config.password,
    )
    assert actual == expected
    assert (config.timeout_s, config.pool_size, config.verify_certs) == (5.0, 2, True)


def test_from_url_verify_false_and_secret_hidden() -> None:
    """verify=false turns certificate checks off, and the password never shows in repr."""
    config = SmtpConfig.from_url("smtps://u:s3cret@h?verify=false", timeout_s=1.0, pool_size=1)
    assert config.verify_certs is False
    assert "s3cret" not in repr(config)


@pytest.mark.parametrize(
    "url",
    ["smtps://relay.acme.test?cafile=/ca.pem", "smtp://relay:587?starttls=true&cafile=/ca.pem"],
)
def test_from_url_cafile_names_the_ca_to_trust_and_keeps_verification_on(url: str) -> None:
    """cafile (SMTPS or STARTTLS) replaces the system CAs; the chain and name are still checked."""
    config = SmtpConfig.from_url(url, timeout_s=1.0, pool_size=1)
    assert (config.ca_file, config.verify_certs) == ("/ca.pem", True)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:25", "scheme"),
        ("smtp://:25", "no host"),
        ("smtp://u:s3cret@h:notaport", "port"),
        ("smtp://u:s3cret@h:99999", "out of range"),
        ("smtp://h:25/path", "path"),
        ("smtp://h:25?starttls=maybe", "starttls must be"),
        ("smtp://h:25?verify=nah", "verify"),
        ("smtp://h:25?tls=true", "unknown parameter"),
        ("smtps://h:465?starttls=true", "already uses TLS"),
        ("smtp://u:s3cret@h:25?cafile=/etc/acme/tls/ca.crt", "cafile applies to TLS"),
    ],
)
def test_from_url_rejects_bad_urls(url: str, message: str) -> None:
    """A bad URL raises ValueError naming the problem, without echoing the password."""
    with pytest.raises(ValueError, match=message) as caught:
        SmtpConfig.from_url(url, timeout_s=1.0, pool_size=1)
    assert "s3cret" not in str(caught.value)


class FakeClock:
    """A settable monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_consecutive_server_down_failures() -> None:
    """Only N consecutive server-down failures open it; a live answer resets the count."""
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, cooldown_s=10.0, clock=clock)
    breaker.record_failure(server_down=True)
    breaker.record_failure(server_down=True)
    breaker.record_failure(server_down=False)  # the relay answered (e.g. 550): it is up
    breaker.record_failure(server_down=True)
    breaker.record_success()
    breaker.record_failure(server_down=True)
    breaker.record_failure(server_down=True)
    assert (breaker.state, breaker.allow()) == ("closed", True)
    breaker.record_failure(server_down=True)
    assert (breaker.state, breaker.allow(), breaker.open_until) == ("open", False, 1010.0)


def test_breaker_half_open_lets_one_probe_and_success_closes() -> None:
    """After the cooldown exactly one probe goes; its success closes the breaker."""
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=10.0, clock=clock)
    breaker.record_failure(server_down=True)
    clock.now += 9.9
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.state == "half_open"
    assert [breaker.allow() for _ in range(3)] == [True, False, False]
    breaker.record_success()
    assert (breaker.state, breaker.allow(), breaker.cooldown_s) == ("closed", True, 10.0)


def test_breaker_failed_probe_reopens_with_doubling_capped_cooldown() -> None:
    """Each failed probe re-opens it for twice the cooldown, up to max_cooldown_s."""
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10.0, max_cooldown_s=30.0, clock=clock)
    breaker.record_failure(server_down=True)
    cooldowns = []
    for _ in range(3):
        clock.now = breaker.open_until
        assert breaker.allow()
        breaker.record_failure(server_down=True)
        assert breaker.state == "open"
        cooldowns.append(breaker.open_until - clock.now)
    assert cooldowns == [20.0, 30.0, 30.0]
    clock.now = breaker.open_until
    assert breaker.allow()
    breaker.record_success()
    assert (breaker.state, breaker.cooldown_s) == ("closed", 10.0)


def test_breaker_probe_that_never_reports_does_not_wedge_it() -> None:
    """A probe lost without an outcome lets another probe through after one cooldown."""
    clock = FakeClock()
    breaker = CircuitBreaker(1, 5.0, clock=clock)
    breaker.record_failure(server_down=True)
    clock.now += 5.0
    assert breaker.allow()
    clock.now += 4.0
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()


def test_breaker_says_while_its_probe_is_out_and_a_peer_can_release_it() -> None:
    """`probing` is true from the probe's start until it reports or times out; `release`
    turns an open breaker half-open at once (another replica found the relay well)."""
    clock = FakeClock()
    breaker = CircuitBreaker(1, 5.0, clock=clock)
    breaker.record_failure(server_down=True)
    assert breaker.state == "open" and not breaker.probing
    breaker.release()
    assert breaker.state == "half_open"
    assert breaker.allow() and breaker.probing
    clock.now += 5.0
    assert not breaker.probing, "a probe that never reported does not block for ever"
    breaker.record_success()
    assert breaker.state == "closed" and not breaker.probing
    breaker.release()
    assert breaker.state == "closed"


def test_breaker_force_open_from_a_shared_signal() -> None:
    """force_open opens a closed breaker until the given time and never shortens it."""
    clock = FakeClock()
    breaker = CircuitBreaker(5, 10.0, clock=clock)
    breaker.force_open(clock.now + 30.0)
    assert (breaker.state, breaker.allow(), breaker.open_until) == ("open", False, 1030.0)
    breaker.force_open(clock.now + 5.0)
    assert breaker.open_until == 1030.0
    clock.now = 1030.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed"


async def test_breaker_uses_loop_time_by_default() -> None:
    """Without an injected clock the breaker keeps time on the running event loop."""
    breaker = CircuitBreaker(1, 0.05)
    breaker.record_failure(server_down=True)
    states = [breaker.state]
    await asyncio.sleep(0.06)  # the time under test: past the 50 ms cooldown on the loop's clock
    states.append(breaker.state)
    assert states == ["open", "half_open"]


def test_bucket_burst_then_steady_interval() -> None:
    """`burst` tokens are free after idling, then one per 1/rate seconds, reserved in order."""
    clock = FakeClock()
    bucket = TokenBucket(10.0, burst=3, clock=clock)
    waits = [round(bucket.reserve(), 6) for _ in range(6)]
    assert waits == [0.0, 0.0, 0.0, 0.1, 0.2, 0.3]
    clock.now += 10.0  # idle long enough to refill, but never beyond `burst`
    assert [round(bucket.reserve(), 6) for _ in range(4)] == [0.0, 0.0, 0.0, 0.1]


def test_bucket_rate_zero_is_unlimited() -> None:
    """Rate 0 never makes anyone wait."""
    bucket = TokenBucket(0.0, burst=1, clock=FakeClock())
    assert {bucket.reserve() for _ in range(10_000)} == {0.0}


async def test_bucket_limits_real_rate_and_is_fair() -> None:
    """50/s with burst 1: 20 concurrent acquirers take about 0.38 s and finish in call order."""
    bucket = TokenBucket(50.0, burst=1)
    finished: list[int] = []

    async def take(n: int) -> None:
        await bucket.acquire()
        finished.append(n)

    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(*(take(n) for n in range(20)))
    elapsed_s = loop.time() - started
    assert 0.3 <= elapsed_s < 2.0
    assert finished == list(range(20))


@pytest.mark.parametrize(
    ("rate_per_s", "burst", "message"),
    [(-1.0, 1, "rate_per_s"), (1.0, 0, "burst")],
)
def test_bucket_rejects_bad_settings(rate_per_s: float, burst: int, message: str) -> None:
    """Negative rates and empty bursts are configuration errors."""
    with pytest.raises(ValueError, match=message):
        TokenBucket(rate_per_s, burst)
