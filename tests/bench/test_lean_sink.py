"""The benchmarks' lean SMTP responder answers real clients correctly and records what the
benchmarks read: our notifier's SMTP pool and the standard library's smtplib (the peer's)."""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage

from bench.lean_sink import LeanSink

from acme_cli.embedded import free_port
from acme_notify.smtp import SmtpConfig, SmtpPool

MESSAGE = (
    b"From: a@acme.example\r\nTo: b@example.com\r\nx-acme-order-id: order-1\r\n"
    b"Message-ID: <m1@acme.example>\r\nSubject: hi\r\n\r\n.leading dot\r\nbody\r\n"
)


async def test_our_smtp_pool_sends_through_it_and_each_message_is_recorded_once() -> None:
    sink = LeanSink("127.0.0.1", free_port())
    await sink.start()
    pool = SmtpPool(SmtpConfig(host=sink.host, port=sink.port, timeout_s=5, pool_size=2))
    try:
        replies = await asyncio.gather(
            *(pool.send("a@acme.example", ["b@example.com"], MESSAGE) for _ in range(5))
        )
    finally:
        await pool.close()
        await sink.stop()
    assert all(reply.startswith("250") for reply in replies)
    assert [(m.order_id, m.message_id) for m in sink.messages] == [
        ("order-1", "<m1@acme.example>")
    ] * 5


async def test_smtplib_with_an_unknown_command_and_quit_gets_the_right_answers() -> None:
    sink = LeanSink("127.0.0.1", free_port())
    await sink.start()

    def send() -> tuple[int, int]:
        with smtplib.SMTP(sink.host, sink.port, local_hostname="peer", timeout=5) as client:
            unknown, _ = client.docmd("VRFY", "b@example.com")
            message = EmailMessage()
            message["X-Acme-Order-Id"] = "order-2"
            message.set_content("hello")
            client.send_message(message, "a@acme.example", ["b@example.com"])
            noop, _ = client.noop()
        return unknown, noop

    try:
        unknown, noop = await asyncio.to_thread(send)
    finally:
        await sink.stop()
    assert (unknown, noop) == (502, 250)
    assert [(m.order_id, m.message_id) for m in sink.messages] == [("order-2", None)]
