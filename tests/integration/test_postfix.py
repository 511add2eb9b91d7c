"""A real Postfix (tests/postfix.py) in front of the mail sink: what a strict relay accepts,
what it refuses and with which replies, and that accepted mail reaches the sink once."""

from __future__ import annotations

import asyncio

import aiosmtplib
import pytest

from acme_cli.smtp_sink import MailSink
from acme_notify.smtp import SmtpConfig, SmtpPool
from tests.postfix import PostfixServer

pytestmark = pytest.mark.slow

SENDER = "orders@acme.example"
RECIPIENT = "customer@example.org"
FQDN_HELO = "notifier.acme.test"
DELIVERY_TIMEOUT_S = 10.0


def message(n: int) -> bytes:
    return (
        f"From: AcME Orders <{SENDER}>\r\nTo: <{RECIPIENT}>\r\n"
        f"Subject: Order {n} confirmed\r\nMessage-ID: <order-{n}@acme.example>\r\n"
        f"X-Acme-Order-Id: order-{n}\r\n\r\nThank you!\r\n"
    ).encode()


def client(mta: PostfixServer, *, helo: str = FQDN_HELO, start_tls: bool = True) -> aiosmtplib.SMTP:
    return aiosmtplib.SMTP(
        hostname="127.0.0.1",
        port=mta.port,
        local_hostname=helo,
        start_tls=start_tls,
        tls_context=mta.tls_context(),
        timeout=5.0,
    )


async def test_starttls_mail_reaches_the_sink_once(
    mta: PostfixServer, sink: MailSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The notifier's pool, given mta.url and the CA, delivers through Postfix exactly once."""
    monkeypatch.setenv("SSL_CERT_FILE", str(mta.ca_path))
    config = SmtpConfig.from_url(mta.url, timeout_s=5.0, pool_size=1, helo_name=FQDN_HELO)
    pool = SmtpPool(config)
    try:
        reply = await pool.send(SENDER, [RECIPIENT], message(1))
    finally:
        await pool.close()
    assert reply.startswith("250 2.0.0 Ok: queued as ")
    [received] = await sink.wait_for(1, timeout_s=DELIVERY_TIMEOUT_S)
    await asyncio.to_thread(mta.wait_until_queue_empty, DELIVERY_TIMEOUT_S)
    assert len(sink.messages) == 1
    assert (received.mail_from, received.rcpt_tos) == (SENDER, (RECIPIENT,))
    assert received.order_id == "order-1"
    received_header = str(received.parsed()["Received"])
    assert f"from {FQDN_HELO}" in received_header
    assert "with ESMTPS" in received_header  # the hop into Postfix was encrypted


async def test_mail_without_starttls_is_refused(mta: PostfixServer) -> None:
    """A client that skips STARTTLS gets 530 5.7.0 at MAIL FROM."""
    smtp = client(mta, start_tls=False)
    await smtp.connect()
    try:
        await smtp.ehlo()
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await smtp.mail(SENDER)
    finally:
        await smtp.quit()
    assert refused.value.code == 530
    assert refused.value.message == "5.7.0 Must issue a STARTTLS command first"


async def test_bare_helo_name_is_refused_at_rcpt(mta: PostfixServer) -> None:
    """EHLO `vm` passes EHLO and MAIL but RCPT gets 504 5.5.2 (smtpd_delay_reject)."""
    smtp = client(mta, helo="vm")
    await smtp.connect()
    try:
        mail_reply = await smtp.mail(SENDER)
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await smtp.rcpt(RECIPIENT)
    finally:
        await smtp.quit()
    assert mail_reply.code == 250
    assert refused.value.code == 504
    assert refused.value.message == (
        "5.5.2 <vm>: Helo command rejected: need fully-qualified hostname"
    )


async def test_denied_relay_refuses_rcpt_until_allowed_again(
    mta: PostfixServer, sink: MailSink
) -> None:
    """After deny_relay() RCPT gets 554 5.7.1 Relay access denied; allow_relay() restores it."""
    await asyncio.to_thread(mta.deny_relay)
    smtp = client(mta)
    await smtp.connect()
    try:
        await smtp.mail(SENDER)
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await smtp.rcpt(RECIPIENT)
    finally:
        await smtp.quit()
    assert refused.value.code == 554
    assert refused.value.message == f"5.7.1 <{RECIPIENT}>: Relay access denied"

    await asyncio.to_thread(mta.allow_relay)
    smtp = client(mta)
    await smtp.connect()
    try:
        _refused, reply = await smtp.sendmail(SENDER, [RECIPIENT], message(2))
    finally:
        await smtp.quit()
    assert reply.startswith("2.0.0 Ok: queued as ")
    [received] = await sink.wait_for(1, timeout_s=DELIVERY_TIMEOUT_S)
    assert received.order_id == "order-2"


async def test_a_session_open_before_the_misconfiguration_is_refused_too(
    mta: PostfixServer, sink: MailSink
) -> None:
    """deny_relay() reaches a pooled session as well: its next RCPT gets Relay access denied."""
    pooled = client(mta)
    await pooled.connect()
    try:
        await asyncio.to_thread(mta.deny_relay)
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await pooled.sendmail(SENDER, [RECIPIENT], message(3))
        await asyncio.to_thread(mta.allow_relay)
        _refused, reply = await pooled.sendmail(SENDER, [RECIPIENT], message(4))
    finally:
        await pooled.quit()
    [recipient] = refused.value.recipients
    assert (recipient.code, recipient.message) == (554, f"5.7.1 <{RECIPIENT}>: Relay access denied")
    assert reply.startswith("2.0.0 Ok: queued as ")
    [received] = await sink.wait_for(1, timeout_s=DELIVERY_TIMEOUT_S)
    assert received.order_id == "order-4"


async def test_bare_lf_in_message_is_refused(mta: PostfixServer, sink: MailSink) -> None:
    """A message with a bare LF gets 550 5.5.2 at end of DATA and never reaches the sink."""

    def send_bare_lf() -> tuple[str, str]:
        # Over a raw socket: aiosmtplib turns every bare LF into CRLF before sending.
        with mta.raw_session(FQDN_HELO) as session:
            session.command(f"MAIL FROM:<{SENDER}>")
            session.command(f"RCPT TO:<{RECIPIENT}>")
            session.command("DATA")
            session.send(b"Subject: smuggled\r\n\r\nline one\nline two\r\n.\r\n")
            return session.reply(), session.command("NOOP")

    reply, after = await asyncio.to_thread(send_bare_lf)
    assert reply == "550 5.5.2 mta.acme.test Error: bare <LF> received"
    assert after.startswith("250")  # refused, not disconnected: the session goes on
    await asyncio.to_thread(mta.wait_until_queue_empty, DELIVERY_TIMEOUT_S)
    assert sink.messages == []
