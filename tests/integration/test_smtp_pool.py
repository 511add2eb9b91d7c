"""SmtpPool against real SMTP servers: the dev MailSink, and a scripted server for hang-ups."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from acme_cli.smtp_sink import MailSink
from acme_notify.errors import PermanentError, TransientError
from acme_notify.smtp import SmtpConfig, SmtpPool
from tests.harness import eventually

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

    def make(
        url: str, *, timeout_s: float = 5.0, pool_size: int = 1, helo_name: str = "localhost"
    ) -> SmtpPool:
        config = SmtpConfig.from_url(
            url, timeout_s=timeout_s, pool_size=pool_size, helo_name=helo_name
        )
        pool = SmtpPool(config)
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

    held = answered = ended = 0  # RCPTs the slow server holds; answered; ended either way

    async def stall(_address: str) -> None:
        nonlocal held, answered, ended
        held += 1
        try:
            await asyncio.sleep(0.3)  # the fault: a slow server, so sends are mid-way
            answered += 1
        finally:
            ended += 1  # answered, or cut off when the client closed the connection

    sink.rcpt_policy = stall
    pool = make_pool(sink.url, pool_size=10)
    sends = [
        asyncio.create_task(pool.send("a@acme.example", ["b@example.com"], message(i)))
        for i in range(10)
    ]
    await asyncio.sleep(cancel_after_s)  # the moment of the cancel, the parameter under test
    for send in sends:
        send.cancel()
    outcomes = await asyncio.gather(*sends, return_exceptions=True)
    delivered = [o for o in outcomes if isinstance(o, str)]
    assert all(isinstance(o, asyncio.CancelledError) or o.startswith("250") for o in outcomes)

    async def sink_settled() -> bool:
        # Every stalled RCPT is over, and each one answered has had its message arrive (only
        # a send still going on gets an answer, and sends its data at once): nothing more can
        # reach the sink.
        return ended == held and len(sink.messages) >= answered

    await eventually(sink_settled, timeout_s=5, what="the stalled RCPTs to end server-side")
    assert len(sink.messages) == len(delivered)


async def test_a_refused_recipient_leaves_the_session_for_the_next_message(
    sink: MailSink, make_pool: MakePool
) -> None:
    """A 550 at RCPT fails that message alone: the next one goes over the same connection."""
    unknown = "nobody@example.org"
    sink.rcpt_policy = lambda address: (
        f"550 5.1.1 <{address}>: unknown" if address == unknown else None
    )
    pool = make_pool(sink.url)
    with pytest.raises(PermanentError) as caught:
        await pool.send(SENDER, [unknown], message(1))
    assert caught.value.reason_class == "invalid_recipient"
    assert await pool.send(SENDER, [RECIPIENT], message(2)) == "250 OK"
    [received] = await sink.wait_for(1, timeout_s=2.0)
    assert received.data == message(2)
    assert (pool.opened, pool.size, pool.in_use) == (1, 1, 0)


class CountingHandler:
    """aiosmtpd hooks: accepts each message (or answers `data_reply`), remembers the EHLO name
    each message came under, and counts the QUITs it receives."""

    def __init__(self) -> None:
        self.quits = 0
        self.delivered = 0
        self.helo_names: list[str | None] = []
        self.data_reply: str | None = None
        self.hold: asyncio.Event | None = None  # while set, DATA waits before answering

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.helo_names.append(session.host_name)
        if self.hold is not None:
            await self.hold.wait()
        if self.data_reply is not None:
            return self.data_reply
        self.delivered += 1
        return "250 OK"

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.quits += 1
        return "221 Bye"


@pytest.fixture
async def counting() -> AsyncIterator[tuple[CountingHandler, str]]:
    """A real aiosmtpd server on 127.0.0.1 with a `CountingHandler`: (handler, smtp URL)."""
    handler = CountingHandler()
    loop = asyncio.get_running_loop()
    sessions: list[SMTP] = []

    def protocol() -> SMTP:
        smtp = SMTP(handler, hostname="counting-server", loop=loop)
        sessions.append(smtp)
        return smtp

    server = await loop.create_server(protocol, host="127.0.0.1", port=0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield handler, f"smtp://127.0.0.1:{port}"
    finally:
        server.close()
        for smtp in sessions:
            if smtp.transport is not None:
                smtp.transport.close()
        await server.wait_closed()
        # As MailSink.stop: aiosmtpd keeps each session's task privately.
        tasks = [getattr(smtp, "_handler_coroutine", None) for smtp in sessions]
        await asyncio.gather(*(task for task in tasks if task is not None), return_exceptions=True)


async def test_close_quits_every_idle_session(
    counting: tuple[CountingHandler, str], make_pool: MakePool
) -> None:
    """close() ends each idle pooled connection with a QUIT the server receives."""
    handler, url = counting
    pool = make_pool(url, pool_size=2)
    await asyncio.gather(*(pool.send(SENDER, [RECIPIENT], message(n)) for n in range(2)))
    assert (pool.opened, pool.size, handler.delivered) == (2, 2, 2)
    await pool.close()
    assert handler.quits == 2
    assert pool.size == 0


async def test_a_session_busy_at_close_is_quit_when_its_send_ends(
    counting: tuple[CountingHandler, str], make_pool: MakePool
) -> None:
    """close() during a send lets it finish, then ends its connection with a QUIT."""
    handler, url = counting
    handler.hold = asyncio.Event()
    pool = make_pool(url)
    send = asyncio.create_task(pool.send(SENDER, [RECIPIENT], message(1)))

    async def at_data() -> bool:
        return len(handler.helo_names) == 1

    try:
        await eventually(at_data, timeout_s=5, what="the send to reach DATA")
        await pool.close()
        assert handler.quits == 0, "a busy session is not interrupted"
    finally:
        handler.hold.set()
    assert await send == "250 OK"
    assert (handler.delivered, handler.quits, pool.size) == (1, 1, 0)


async def test_a_421_at_data_quits_that_session_and_the_next_send_reconnects(
    counting: tuple[CountingHandler, str], make_pool: MakePool
) -> None:
    """A server closing the session (421) is answered with QUIT, not a dropped socket; the next
    message goes over a new connection."""
    handler, url = counting
    handler.data_reply = "421 4.3.0 closing this session"
    pool = make_pool(url)
    with pytest.raises(TransientError) as caught:
        await pool.send(SENDER, [RECIPIENT], message(1))
    assert caught.value.server_down is True
    assert handler.quits == 1
    assert pool.size == 0
    handler.data_reply = None
    assert await pool.send(SENDER, [RECIPIENT], message(2)) == "250 OK"
    assert (handler.delivered, pool.opened, pool.size) == (1, 2, 1)


async def test_ehlo_gives_the_configured_helo_name(
    counting: tuple[CountingHandler, str], make_pool: MakePool
) -> None:
    """The name the server hears in EHLO is the configured `helo_name`, on every connection."""
    handler, url = counting
    pool = make_pool(url, pool_size=2, helo_name="notifier.acme.test")
    await asyncio.gather(*(pool.send(SENDER, [RECIPIENT], message(n)) for n in range(2)))
    assert pool.opened == 2
    assert handler.helo_names == ["notifier.acme.test", "notifier.acme.test"]
