"""Whose fault a refusal is: the recipient's (dead-letter it) or ours (hold everything).

The replies are the ones real relays give (Postfix, Gmail, Microsoft 365, Spamhaus-listed
hosts), at the SMTP stage where they give them.
"""

from __future__ import annotations

import aiosmtplib
import pytest

from acme_notify.errors import PermanentError, ProviderError, TransientError
from acme_notify.replies import classify, refusal_key, verdict

BOB = "bob@example.com"


def rcpt(code: int, text: str) -> aiosmtplib.SMTPRecipientRefused:
    return aiosmtplib.SMTPRecipientRefused(code, text, BOB)


@pytest.mark.parametrize(
    ("exc", "reason_class"),
    [
        (rcpt(550, "5.1.1 <bob@example.com>: Recipient address rejected: User unknown"),
         "invalid_recipient"),
        (rcpt(550, "5.1.1 The email account that you tried to reach does not exist."),
         "invalid_recipient"),
        (rcpt(501, "5.1.3 Bad recipient address syntax"), "invalid_recipient"),
        (rcpt(553, "mailbox name not allowed"), "invalid_recipient"),
        (rcpt(550, "mailbox unavailable"), "invalid_recipient"),
        (rcpt(552, "5.2.2 The email account that you tried to reach is over quota."),
         "smtp_permanent"),
        (rcpt(550, "5.2.1 The email account that you tried to reach is disabled."),
         "smtp_permanent"),
        (rcpt(550, "5.7.1 <bob@example.com>: Recipient address rejected: Access denied"),
         "smtp_permanent"),
        (rcpt(550, "5.4.1 Recipient address rejected: Access denied. AS(201806281)"),
         "smtp_permanent"),
        (rcpt(550, "5.7.17 Mailbox owner has changed"), "smtp_permanent"),
        (aiosmtplib.SMTPDataError(554, "5.7.1 Message rejected as spam"), "smtp_permanent"),
        (aiosmtplib.SMTPDataError(550, "5.6.0 Content rejected"), "smtp_permanent"),
        (aiosmtplib.SMTPDataError(554, "Transaction failed"), "smtp_permanent"),
    ],
)  # fmt: skip
def test_refusals_about_the_recipient_dead_letter_that_email(
    exc: BaseException, reason_class: str
) -> None:
    """Bad, full or disabled mailboxes and policies on that recipient are the recipient's."""
    found = classify(exc)
    assert isinstance(found, PermanentError)
    assert found.reason_class == reason_class


@pytest.mark.parametrize(
    "exc",
    [
        rcpt(554, "5.7.1 <bob@example.com>: Relay access denied"),
        rcpt(554, "Relay access denied"),
        rcpt(550, "relaying denied"),
        rcpt(550, "5.7.1 Unable to relay for bob@example.com"),
        rcpt(504, "5.5.2 <vm>: Helo command rejected: need fully-qualified hostname"),
        rcpt(530, "5.7.0 Must issue a STARTTLS command first"),
        rcpt(503, "5.5.1 Error: need MAIL command"),
        rcpt(550, "5.7.26 Unauthenticated email from acme.example is not accepted due to "
                  "domain's DMARC policy"),
        rcpt(550, "5.7.25 The IP address sending this message does not have a PTR record"),
        rcpt(554, "5.7.1 Service unavailable; Client host [192.0.2.7] blocked using "
                  "zen.spamhaus.org"),
        rcpt(550, "5.7.1 Sender address rejected: not owned by user pedidos@acme.example"),
        aiosmtplib.SMTPSenderRefused(
            553, "5.1.8 <pedidos@acme.example>: Sender address rejected: Domain not found",
            "pedidos@acme.example"),
        aiosmtplib.SMTPSenderRefused(550, "Sender rejected", "pedidos@acme.example"),
        aiosmtplib.SMTPDataError(550, "5.7.1 Our system has detected an unusual rate of "
                                      "unsolicited mail originating from your IP address"),
        aiosmtplib.SMTPDataError(552, "5.3.4 Message size exceeds fixed limit"),
        aiosmtplib.SMTPDataError(550, "5.7.20 No passing DKIM signature found"),
        aiosmtplib.SMTPAuthenticationError(535, "5.7.8 Error: authentication failed"),
        aiosmtplib.SMTPConnectResponseError(554, "5.3.2 no service here"),
        aiosmtplib.SMTPHeloError(550, "5.7.1 Access denied"),
        aiosmtplib.SMTPNotSupported("SMTP STARTTLS extension not supported by server."),
    ],
)  # fmt: skip
def test_refusals_about_us_are_provider_failures_that_dead_letter_nothing(
    exc: BaseException,
) -> None:
    """Relay access, HELO, TLS, auth, sender, DMARC/DKIM/PTR, our IP and size are ours."""
    found = classify(exc)
    assert isinstance(found, ProviderError)
    assert found.server_down, "the breaker counts it and the try is given back"
    assert found.reason_class == "smtp_provider"


def test_a_refusal_while_opening_the_session_is_ours_whatever_it_says() -> None:
    """A 5xx to STARTTLS (any reply while opening the session) is never a dead letter."""
    exc = aiosmtplib.SMTPResponseException(554, "Transaction failed")
    assert isinstance(classify(exc, session=True), ProviderError)
    assert isinstance(classify(exc), PermanentError), "after MAIL it could be the message's"


def test_one_refusal_about_us_among_several_recipients_wins() -> None:
    """If any recipient's refusal is about us, nothing can succeed: a provider failure."""
    exc = aiosmtplib.SMTPRecipientsRefused(
        [
            rcpt(550, "5.1.1 unknown"),
            aiosmtplib.SMTPRecipientRefused(554, "5.7.1 Relay access denied", "c@y.org"),
        ]
    )
    assert isinstance(classify(exc), ProviderError)


def test_a_4xx_about_us_is_still_only_transient() -> None:
    """A temporary refusal is retried as before, whoever it is about."""
    found = verdict(450, "4.7.1 <vm>: Helo command rejected: Host not found", "rcpt")
    assert type(found) is TransientError
    assert not found.server_down


def test_odd_reply_text_is_kept_readable_on_one_line() -> None:
    """NUL, undecodable bytes and extra lines never reach a reason as such."""
    found = verdict(550, "5.1.1 caf\udce9 \x00 unknown\r\nsecond line", "rcpt")
    assert found.reason == "550 5.1.1 caf\\xe9 \\x00 unknown"


def test_the_same_refusal_to_different_recipients_has_one_key() -> None:
    """Addresses, bracketed hosts and queue ids differ per recipient; the key does not."""
    first = refusal_key("554 5.7.1 <ana@example.com>: Relay access denied")
    second = refusal_key("554 5.7.1 <bob.2@mail.example.org>: Relay access denied")
    other = refusal_key("550 5.1.1 <ana@example.com>: User unknown")
    queued = refusal_key("550 5.7.1 [192.0.2.7] blocked, ref 8f3a2c91")
    assert first == second == "554 5.7.1 : relay access denied"
    assert other != first
    assert queued == refusal_key("550 5.7.1 [198.51.100.9] blocked, ref 0d17e2aa")


def test_addresses_a_relay_quotes_are_masked_in_the_reason() -> None:
    """A reason travels into dead letters, timelines and logs: never with a full address."""
    found = verdict(550, "5.7.1 <ana.souza@blocked.example>: Recipient address rejected", "rcpt")
    assert found.reason == "550 5.7.1 <a***@blocked.example>: Recipient address rejected"
