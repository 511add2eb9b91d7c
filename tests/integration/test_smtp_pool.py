"""SmtpPool against real SMTP servers: the dev MailSink, and a scripted server for hang-ups."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from acme_cli.smtp_sink import MailSink
from acme_notify.errors import PermanentError, TransientError
from acme_notify.smtp import SmtpConfig, SmtpPool

SENDER = "orders@acme.example"
RECIPIENT = "customer@example.org"

MakePool = Callable[..., SmtpPool]


def message(n: int) -> bytes:
    """A small, already-encoded message; the leading-dot line exercises dot-stuffing."""
    return (
        f"From: AcME Orders <{SENDER}>\r\nTo: <{RECIPIENT}>\r\n"
        f"Subject: Order {n} confirmed\r\nMessage-ID: <order-{n}@acme.example>\r\n"
        f"X-Acme-Order-Id: order-{n}\r\n\r\nThank you!\r\n.leading dot\r\n"
    ).encode()


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    pools: list[SmtpPool] = []

    def make(url: str, *, timeout_s: float = 5.0, pool_size: int = 1) -> SmtpPool:
        pool = SmtpPool(SmtpConfig.from_url(url, timeout_s=timeout_s, pool_size=pool_size))
        pools.append(pool)
        return pool

    try:
        yield make
    finally:
        for pool in pools:
            await pool.close()


async def test_sent_bytes_arrive_identical(sink: MailSink, make_pool: MakePool) -> None:
    """A send returns the server's reply and the sink receives exactly the bytes sent."""
    pool = make_pool(sink.url)
    reply = await pool.send(SENDER, [RECIPIENT], message(1))
    assert reply == "250 OK"
    [received] = await sink.wait_for(1, timeout_s=2.0)
    assert received.data == message(1)
    assert (received.mail_from, received.rcpt_tos) == (SENDER, (RECIPIENT,))


async def test_sequential_sends_reuse_one_connection(sink: MailSink, make_pool: MakePool) -> None:
    """20 sequential sends open a single connection and leave it idle in the pool."""
    pool = make_pool(sink.url, pool_size=4)
    for n in range(20):
        await pool.send(SENDER, [RECIPIENT], message(n))
    received = await sink.wait_for(20, timeout_s=2.0)
    assert [m.data for m in received] == [message(n) for n in range(20)]
    assert (pool.opened, pool.size, pool.in_use) == (1, 1, 0)


async def test_550_is_permanent(sink: MailSink, make_pool: MakePool) -> None:
    """A 550 5.1.1 answer raises PermanentError(invalid_recipient) carrying the reply code."""
    sink.policy = lambda envelope: "550 5.1.1 mailbox unknown"
    pool = make_pool(sink.url)
    with pytest.raises(PermanentError) as caught:
        await pool.send(SENDER, [RECIPIENT], message(1))
    assert caught.value.reason == "550 5.1.1 mailbox unknown"
    assert caught.value.reason_class == "invalid_recipient"
    assert sink.messages == []


async def test_421_is_transient_server_down(sink: MailSink, make_pool: MakePool) -> None:
    """A 421 answer raises TransientError(server_down=True); the next send reconnects."""
    sink.policy = lambda envelope: "421 4.3.0 try later"
    pool = make_pool(sink.url)
    with pytest.raises(TransientError) as caught:
        await pool.send(SENDER, [RECIPIENT], message(1))
    assert caught.value.reason == "421 4.3.0 try later"
    assert caught.value.server_down is True
    sink.policy = None
    assert await pool.send(SENDER, [RECIPIENT], message(2)) == "250 OK"
    assert (pool.opened, pool.size) == (2, 1)


async def test_connection_refused_is_transient_and_quick(make_pool: MakePool) -> None:
    """Nothing listening: TransientError(server_down=True) naming the peer, well before timeout."""
    stopped = MailSink(None)
    await stopped.start()
    url, port = stopped.url, stopped.port
    await stopped.stop()
    pool = make_pool(url, timeout_s=5.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TransientError) as caught:
        await pool.send(SENDER, [RECIPIENT], message(1))
    assert loop.time() - started < 1.0
    assert caught.value.server_down is True
    assert caught.value.reason == f"connection refused (127.0.0.1:{port})"
    assert (pool.size, pool.in_use) == (0, 0)


async def test_slow_server_times_out_within_budget(sink: MailSink, make_pool: MakePool) -> None:
    """A reply slower than timeout_s raises TransientError(timeout) after about timeout_s."""
    release = asyncio.Event()

    async def stall(envelope: Any) -> None:
        await release.wait()

    sink.policy = stall
    pool = make_pool(sink.url, timeout_s=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(TransientError) as caught:
            await pool.send(SENDER, [RECIPIENT], message(1))
        elapsed_s = loop.time() - started
    finally:
        release.set()  # lets the sink's session finish so it can stop
    assert 0.25 <= elapsed_s < 0.8
    assert caught.value.server_down is True
    assert "timed out" in caught.value.reason
    # The timed-out connection is gone; a healthy server gets the next send on a new one.
    sink.policy = None
    assert await pool.send(SENDER, [RECIPIENT], message(2)) == "250 OK"
    assert (pool.opened, pool.size) == (2, 1)


async def test_idle_connection_dropped_by_server_restart(make_pool: MakePool) -> None:
    """A server restart between sends is absorbed: the next send reconnects and succeeds."""
    first = MailSink(None)
    await first.start()
    pool = make_pool(first.url)
    await pool.send(SENDER, [RECIPIENT], message(1))
    await first.stop()
    second = MailSink(None, port=first.port)
    await second.start()
    try:
        assert await pool.send(SENDER, [RECIPIENT], message(2)) == "250 OK"
        [received] = await second.wait_for(1, timeout_s=2.0)
    finally:
        await pool.close()
        await second.stop()
    assert received.data == message(2)
    assert pool.opened == 2


async def test_concurrent_sends_stay_within_pool_size(sink: MailSink, make_pool: MakePool) -> None:
    """50 concurrent sends with pool_size=4 all arrive over at most 4 connections."""
    pool = make_pool(sink.url, pool_size=4)
    peak_size = 0

    async def slow_accept(envelope: Any) -> None:
        nonlocal peak_size
        peak_size = max(peak_size, pool.size)
        await asyncio.sleep(0.005)  # keeps sends overlapping so all 4 slots get used

    sink.policy = slow_accept
    replies = await asyncio.gather(*(pool.send(SENDER, [RECIPIENT], message(n)) for n in range(50)))
    assert replies == ["250 OK"] * 50
    received = await sink.wait_for(50, timeout_s=5.0)
    assert sorted(m.data for m in received) == sorted(message(n) for n in range(50))
    assert pool.opened == 4
    assert peak_size <= 4
    assert (pool.size, pool.in_use) == (4, 0)


class ScriptedServer:
    """A minimal SMTP server that hangs up on its first connection at a chosen point, to
    reproduce a relay closing a pooled connection at the moment the client reuses it."""

    def __init__(self, hang_up_at: tuple[str, int]) -> None:
        self.hang_up_at = hang_up_at  # (command, nth MAIL of connection 1)
        self.connections = 0
        self.delivered: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"smtp://127.0.0.1:{port}"

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        self.connections += 1
        first, mails = self.connections == 1, 0
        writer.write(b"220 scripted\r\n")
        while line := await reader.readline():
            verb = line[:4].upper().decode()
            mails += verb == "MAIL"
            if first and self.hang_up_at == (verb, mails):
                if verb == "DATA":
                    writer.write(b"354 go ahead\r\n")
                    await reader.readuntil(b"\r\n.\r\n")
                writer.close()
                return
            if verb == "DATA":
                writer.write(b"354 go ahead\r\n")
                stuffed = (await reader.readuntil(b"\r\n.\r\n"))[:-3].split(b"\r\n")
                lines = (row[1:] if row.startswith(b"..") else row for row in stuffed)
                self.delivered.append(b"\r\n".join(lines))
            writer.write(b"221 bye\r\n" if verb == "QUIT" else b"250 OK\r\n")
            await writer.drain()


@pytest.fixture
async def scripted(request: pytest.FixtureRequest) -> AsyncIterator[tuple[ScriptedServer, str]]:
    server = ScriptedServer(request.param)
    url = await server.start()
    try:
        yield server, url
    finally:
        await server.stop()


@pytest.mark.parametrize("scripted", [("MAIL", 2)], indirect=True)
async def test_reused_connection_closed_at_mail_is_retried(
    scripted: tuple[ScriptedServer, str], make_pool: MakePool
) -> None:
    """A pooled connection hung up on before MAIL is answered is retried on a fresh one."""
    server, url = scripted
    pool = make_pool(url)
    await pool.send(SENDER, [RECIPIENT], message(1))
    assert await pool.send(SENDER, [RECIPIENT], message(2)) == "250 OK"
    assert server.delivered == [message(1), message(2)]
    assert (server.connections, pool.opened, pool.size) == (2, 2, 1)


@pytest.mark.parametrize("scripted", [("DATA", 2)], indirect=True)
async def test_hang_up_after_mail_answered_is_a_failure(
    scripted: tuple[ScriptedServer, str], make_pool: MakePool
) -> None:
    """A hang-up mid-transaction (after MAIL was answered) fails the send, without a retry."""
    server, url = scripted
    pool = make_pool(url)
    await pool.send(SENDER, [RECIPIENT], message(1))
    with pytest.raises(TransientError) as caught:
        await pool.send(SENDER, [RECIPIENT], message(2))
    assert caught.value.server_down is True
    assert caught.value.reason.startswith("connection lost")
    assert server.delivered == [message(1)]
    assert (server.connections, pool.size) == (1, 0)


@pytest.mark.parametrize("cancel_after_s", [0.0, 0.0005, 0.001, 0.002, 0.005, 0.05])
async def test_a_cancelled_send_is_never_delivered_behind_the_callers_back(
    sink: MailSink, make_pool: MakePool, cancel_after_s: float
) -> None:
    """Cancelled at any moment, a send either raises CancelledError and delivers nothing, or
    (when Python 3.11's wait_for swallows the cancel) reports its 250: never both."""

    async def stall(_address: str) -> None:
        await asyncio.sleep(0.3)

    sink.rcpt_policy = stall
    pool = make_pool(sink.url, pool_size=10)
    sends = [
        asyncio.create_task(pool.send("a@acme.example", ["b@example.com"], message(i)))
        for i in range(10)
    ]
    await asyncio.sleep(cancel_after_s)
    for send in sends:
        send.cancel()
    outcomes = await asyncio.gather(*sends, return_exceptions=True)
    delivered = [o for o in outcomes if isinstance(o, str)]
    assert all(isinstance(o, asyncio.CancelledError) or o.startswith("250") for o in outcomes)
    await asyncio.sleep(0.5)  # stalled RCPTs end; a cancelled send sends no message data
    assert len(sink.messages) == len(delivered)
