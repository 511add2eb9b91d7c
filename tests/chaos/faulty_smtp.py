"""A fault-injecting SMTP server for the chaos tests, run as its own OS process.

Built on aiosmtpd, like `acme_cli.smtp_sink.MailSink`. The test steers it through a control
file holding one `FaultPlan` as JSON: the test replaces the file atomically, the server polls it
every 50 ms, applies it and acknowledges its `generation` in `<control>.ack`, so the test knows
from when a fault is in force. Off by default: a plain, fast sink.

It records every message it *stores* (accepts) as `order_id,received_at,message_id` lines, the
format of bench/sink_recorder.py that `bench.stack.MailLog` reads, and every fault it injects
as one JSON line (`at`, `fault`, `order_id`) in the faults file. The received file appears only
once the server listens: its existence is the readiness signal.

Faults: `mode` "greet421" answers every new connection with 421 and closes it (and 421s any
message of an open session); "down" stops listening (connection refused) and drops open
sessions. Per message, at DATA: `delay_s` (a slow server), then one draw picks `tempfail` (a 4xx
reply), `drop` (connection closed before any reply, nothing stored), `accept_close` (stored,
then closed before the reply: the client cannot know, so a retry duplicates it; the one
duplicate window SMTP itself has) or `stall` (no reply for `stall_s`, longer than the client's
timeout; nothing is stored because the client hangs up first). `reject_rcpt` (a regex) gives
`reject_reply` (550 5.1.1 by default) at RCPT to matching recipients; `accept_replies` answers
stored messages with odd 250 replies (NUL, Latin-1 bytes, several lines, very long).

Usage: ``python tests/chaos/faulty_smtp.py --port P --control C --received R --faults F``
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import signal
import sys
import time
import weakref
from collections.abc import Sequence
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import IO, Any, Final, Literal

import msgspec
from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["FaultPlan", "ack_path"]

_POLL_S: Final = 0.05
_MAX_RUNTIME_S: Final = 24 * 3600.0
#: How long a connection closed by us may take to be torn down before we stop waiting for it.
_CLOSE_WAIT_S: Final = 60.0
_ORDER_HEADER: Final = "X-Acme-Order-Id"

Mode = Literal["up", "greet421", "down"]


class FaultPlan(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the server does now; every fraction is of messages reaching DATA (0..1)."""

    generation: int = 0
    mode: Mode = "up"
    #: Every message waits this long at DATA before its verdict (a slow server).
    delay_s: float = 0.0
    tempfail: float = 0.0
    tempfail_replies: tuple[str, ...] = (
        "451 4.3.0 temporary local problem, try again later",
        "421 4.3.2 service busy, closing transmission channel",
    )
    drop: float = 0.0
    accept_close: float = 0.0
    stall: float = 0.0
    stall_s: float = 5.0
    #: Recipients matching this regex (search) get `reject_reply` at RCPT; "" = none.
    reject_rcpt: str = ""
    #: The refusal those recipients get; `{address}` is replaced by the recipient.
    reject_reply: str = "550 5.1.1 <{address}>: mailbox unavailable"
    #: What a stored message is answered with, in turn; "" = "250 OK". Each is sent as its
    #: Latin-1 bytes, so "\u0000" is a NUL byte and "\u00e9" a lone 0xE9 (not UTF-8), and
    #: "\r\n250 " makes a multi-line reply.
    accept_replies: tuple[str, ...] = ()
    seed: int = 7


def ack_path(control: Path) -> Path:
    return control.with_name(control.name + ".ack")


class _Greet421(asyncio.Protocol):
    """What a new connection meets in "greet421" mode: a 421 greeting and a close."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(b"421 4.3.2 service not available, closing transmission channel\r\n")
        transport.close()


class FaultyServer:
    def __init__(self, host: str, port: int, received: IO[str], faults: IO[str]) -> None:
        self.host = host
        self.port = port
        self.plan = FaultPlan()
        self._rng = random.Random(self.plan.seed)
        self._reject: re.Pattern[str] | None = None
        self._accepted = 0
        self._received = received
        self._faults = faults
        self._listener: asyncio.Server | None = None
        # Python 3.11's Server.close() leaves accepted connections open: we close them.
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def _log_fault(self, fault: str, **detail: Any) -> None:
        self._faults.write(json.dumps({"at": time.time(), "fault": fault, **detail}) + "\n")
        self._faults.flush()

    def _protocol(self) -> asyncio.Protocol:
        if self.plan.mode == "greet421":
            self._log_fault("greet421")
            return _Greet421()
        # An explicit hostname: the default, socket.getfqdn(), can stall on DNS.
        smtp = SMTP(
            _Handler(self),
            hostname="chaos-smtp",
            ident="acme chaos smtp",
            enable_SMTPUTF8=True,
            loop=asyncio.get_running_loop(),
        )
        self._sessions.add(smtp)
        return smtp

    async def listen(self) -> None:
        if self._listener is None:
            loop = asyncio.get_running_loop()
            self._listener = await loop.create_server(
                self._protocol, self.host, self.port, reuse_address=True
            )

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        self._drop_sessions()
        if listener is not None:
            await listener.wait_closed()

    def _drop_sessions(self) -> None:
        for smtp in list(self._sessions):
            if smtp.transport is not None:
                smtp.transport.close()
        self._sessions.clear()

    async def apply(self, plan: FaultPlan) -> None:
        previous, self.plan = self.plan, plan
        if plan.seed != previous.seed:
            self._rng = random.Random(plan.seed)
        self._reject = re.compile(plan.reject_rcpt) if plan.reject_rcpt else None
        if plan.mode != previous.mode:
            self._log_fault("mode", mode=plan.mode)
            if plan.mode == "down":
                await self.close()
            else:
                # Pooled connections would otherwise go on as if nothing happened.
                self._drop_sessions()
                await self.listen()

    def on_rcpt(self, address: str) -> str | None:
        if self._reject is not None and self._reject.search(address):
            self._log_fault("reject_rcpt", address=address)
            return self.plan.reject_reply.replace("{address}", address)
        return None

    async def on_data(self, server: SMTP, envelope: Envelope) -> str | bytes:
        plan = self.plan
        data = envelope.original_content or b""
        headers = BytesHeaderParser().parsebytes(data)
        order_id = str(headers.get(_ORDER_HEADER, "-")).strip() or "-"
        message_id = str(headers.get("Message-ID", "-")).strip() or "-"
        if plan.mode == "greet421":
            self._log_fault("tempfail", order_id=order_id, reply="421")
            return "421 4.3.2 service not available, closing transmission channel"
        if plan.delay_s > 0:
            await asyncio.sleep(plan.delay_s)
        draw = self._rng.random()
        if draw < plan.tempfail:
            reply = self._rng.choice(plan.tempfail_replies)
            self._log_fault("tempfail", order_id=order_id, reply=reply[:3])
            return reply
        draw -= plan.tempfail
        if draw < plan.drop:
            self._log_fault("drop", order_id=order_id)
            return await self._hang_up(server)
        draw -= plan.drop
        if draw < plan.accept_close:
            self._store(order_id, message_id)
            self._log_fault("accept_close", order_id=order_id)
            return await self._hang_up(server)
        draw -= plan.accept_close
        if draw < plan.stall:
            self._log_fault("stall", order_id=order_id)
            # The client times out and hangs up first, which cancels this handler.
            await asyncio.sleep(plan.stall_s)
            return "451 4.4.2 timed out locally"
        self._store(order_id, message_id)
        # Nothing awaits between storing and this reply: no fault can slip in between.
        if plan.accept_replies:
            self._accepted += 1
            reply = plan.accept_replies[self._accepted % len(plan.accept_replies)]
            return reply.encode("latin-1")
        return "250 OK"

    def _store(self, order_id: str, message_id: str) -> None:
        self._received.write(f"{order_id},{time.time():.6f},{message_id}\n")
        self._received.flush()

    async def _hang_up(self, server: SMTP) -> str:
        if server.transport is not None:
            server.transport.close()
        # connection_lost cancels this session's task at once; the sleep only bounds it.
        await asyncio.sleep(_CLOSE_WAIT_S)
        return "421 4.3.2 closing"


class _Handler:
    """The aiosmtpd hooks, kept apart because aiosmtpd scans its handler for `handle_*`."""

    def __init__(self, server: FaultyServer) -> None:
        self._server = server

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        refusal = self._server.on_rcpt(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str | bytes:
        return await self._server.on_data(server, envelope)


async def _watch(server: FaultyServer, control: Path, stop: asyncio.Event) -> None:
    # The content, not the mtime, tells a new plan: two plans written within one clock tick
    # can share an mtime and a size.
    seen: bytes | None = None
    decoder = msgspec.json.Decoder(FaultPlan)
    while not stop.is_set():
        with contextlib.suppress(FileNotFoundError):
            raw = control.read_bytes()  # noqa: ASYNC240 - a tiny local file, once per poll
            if raw != seen:
                seen = raw
                plan = decoder.decode(raw)
                await server.apply(plan)
                ack = ack_path(control)
                temp = ack.with_name(ack.name + ".tmp")
                temp.write_text(json.dumps({"generation": plan.generation}))
                os.replace(temp, ack)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), _POLL_S)


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    with args.faults.open("a", encoding="utf-8") as faults:
        staging = args.received.with_name(args.received.name + ".tmp")
        with staging.open("a", encoding="utf-8") as received:
            server = FaultyServer(args.host, args.port, received, faults)
            await server.listen()
            # Renamed into place only now that we listen: the parent waits for this file.
            os.replace(staging, args.received)
            watcher = asyncio.create_task(_watch(server, args.control, stop))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.max_runtime_s)
            stop.set()
            await watcher
            await server.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control", type=Path, required=True)
    parser.add_argument("--received", type=Path, required=True)
    parser.add_argument("--faults", type=Path, required=True)
    parser.add_argument("--max-runtime-s", type=float, default=3600.0)
    args = parser.parse_args(argv)
    if args.host != "127.0.0.1" or not 0 < args.max_runtime_s <= _MAX_RUNTIME_S:
        print("faulty_smtp: loopback (127.0.0.1) only, and a bounded runtime", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    # aiosmtpd logs every command at INFO; a closed session at INFO too.
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
