"""The embedded dev stack works with nothing but Python: Postgres, Redis and the SMTP sink."""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path

import aiosmtplib
import asyncpg
import pytest
import redis.asyncio as redis

from acme_cli.embedded import EmbeddedPostgres, EmbeddedRedis
from acme_cli.smtp_sink import MailSink


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "pg", durable=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def durable_postgres(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    server = EmbeddedPostgres(tmp_path / "pg", durable=True)
    try:
        yield server
    finally:
        server.stop()


async def _fetchval(url: str, sql: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def _execute(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def test_postgres_keeps_data_and_url_across_restart(postgres: EmbeddedPostgres) -> None:
    """EmbeddedPostgres answers SQL and keeps its data and URL across stop/start."""
    url = postgres.start()
    assert url == f"postgresql://postgres@127.0.0.1:{postgres.port}/acme"
    assert await _fetchval(url, "select 1") == 1
    await _execute(url, "create table kept (id int primary key)", "insert into kept values (7)")

    postgres.stop()
    assert not postgres.running

    assert postgres.start() == url
    assert await _fetchval(url, "select id from kept") == 7


async def test_postgres_restarts_after_sigkill(durable_postgres: EmbeddedPostgres) -> None:
    """A SIGKILLed durable Postgres restarts despite its stale postmaster.pid, data intact."""
    url = durable_postgres.start()
    await _execute(url, "create table kept (id int)", "insert into kept values (1)")

    durable_postgres.kill()
    assert not durable_postgres.running
    assert (durable_postgres.data_dir / "postmaster.pid").exists()

    assert durable_postgres.start() == url
    assert await _fetchval(url, "select count(*) from kept") == 1


@pytest.mark.parametrize(
    ("appendonly", "crash", "survives"),
    [(True, False, True), (True, True, True), (False, False, False)],
    ids=["aof-stop", "aof-kill", "no-aof-stop"],
)
async def test_redis_restart_keeps_data_only_with_appendonly(
    tmp_path: Path, appendonly: bool, crash: bool, survives: bool
) -> None:
    """EmbeddedRedis serves SET/GET; a restart keeps the data only with appendonly."""
    server = EmbeddedRedis(tmp_path / "redis", appendonly=appendonly)
    try:
        url = server.start()
        async with redis.from_url(url) as client:
            await client.set("greeting", "hello")
            assert await client.get("greeting") == b"hello"

        if crash:
            server.kill()
        else:
            server.stop()
        assert not server.running

        assert server.start() == url
        async with redis.from_url(url) as client:
            assert await client.get("greeting") == (b"hello" if survives else None)
    finally:
        server.stop()


def _confirmation(order_id: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "orders@acme.test"
    message["To"] = "buyer@example.test"
    message["Subject"] = f"Order {order_id} confirmed"
    message["Message-ID"] = f"<{order_id}@acme.test>"
    message["X-Acme-Order-Id"] = order_id
    message.set_content("Thank you for your order.")
    return message


async def test_mail_sink_records_and_writes_accepted_message(tmp_path: Path) -> None:
    """MailSink records a message sent with aiosmtplib and writes it as a parseable .eml."""
    mail_dir = tmp_path / "mail"
    sink = MailSink(mail_dir)
    await sink.start()
    try:
        assert sink.url == f"smtp://127.0.0.1:{sink.port}"
        await aiosmtplib.send(
            _confirmation("ord_1"), hostname="127.0.0.1", port=sink.port, start_tls=False
        )
        [received] = await sink.wait_for(1, timeout_s=5)
    finally:
        await sink.stop()

    assert received.mail_from == "orders@acme.test"
    assert received.rcpt_tos == ("buyer@example.test",)
    assert received.message_id == "<ord_1@acme.test>"
    assert received.order_id == "ord_1"
    [eml] = list(mail_dir.iterdir())
    assert eml.suffix == ".eml"
    assert eml.read_bytes() == received.data
    parsed = BytesParser(policy=default_policy).parsebytes(eml.read_bytes())
    assert parsed["Subject"] == "Order ord_1 confirmed"
    assert received.parsed().get_content().strip() == "Thank you for your order."


async def test_mail_sink_policy_rejects_at_data(tmp_path: Path) -> None:
    """A policy answering 550 makes aiosmtplib fail with code 550, and nothing is stored."""
    mail_dir = tmp_path / "mail"
    sink = MailSink(mail_dir, policy=lambda envelope: "550 5.1.1 mailbox unknown")
    await sink.start()
    try:
        with pytest.raises(aiosmtplib.SMTPResponseException) as failure:
            await aiosmtplib.send(
                _confirmation("ord_2"), hostname="127.0.0.1", port=sink.port, start_tls=False
            )
    finally:
        await sink.stop()

    assert failure.value.code == 550
    assert sink.messages == []
    assert list(mail_dir.iterdir()) == []


async def test_mail_sink_stop_closes_idle_connections(tmp_path: Path) -> None:
    """MailSink.stop() drops a connected but idle client without leaking tasks or sockets."""
    sink = MailSink(None)
    await sink.start()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=sink.port, start_tls=False)
    await client.connect()
    try:
        await sink.stop()
        with pytest.raises(aiosmtplib.SMTPServerDisconnected):
            await client.noop()
    finally:
        client.close()
