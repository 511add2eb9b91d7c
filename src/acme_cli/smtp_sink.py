"""An SMTP sink for dev and tests: accepts (or, by policy, rejects) mail and keeps it.

This module owns the receiving end of the confirmation e-mails when no real relay is
configured: an aiosmtpd server running in the caller's event loop (no Controller thread,
so a test and its sink share one loop) that records every accepted message in memory and,
given a `mail_dir`, as one `.eml` file per message. A `policy` callable decides per
message whether to accept it or answer with an SMTP error, for fault injection.
"""

from __future__ import annotations

import asyncio
import email.message
import email.policy
import hashlib
import inspect
import logging
import os
import ssl
import time
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.parser import BytesHeaderParser, BytesParser
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

__all__ = ["MailSink", "RcptPolicy", "ReceivedMessage", "SmtpPolicy", "run_sink_forever"]

_log = logging.getLogger(__name__)

# Given the envelope (mail_from, rcpt_tos, content) at DATA time, return None to accept,
# or a full SMTP reply such as "421 4.3.0 try later" / "550 5.1.1 mailbox unknown" to
# refuse the message. May be async, e.g. to simulate a slow server.
SmtpPolicy = Callable[[Envelope], str | Awaitable[str | None] | None]

# Given the recipient address at RCPT time: None to accept, or an SMTP reply to refuse it.
RcptPolicy = Callable[[str], str | Awaitable[str | None] | None]

_ACCEPTED = "250 OK"
_STORE_FAILED = "451 4.3.0 local error storing the message"
#: How long stop() lets open sessions end by themselves once their connections are closed.
_STOP_GRACE_S = 1.0
_ORDER_ID_HEADER = "X-Acme-Order-Id"


@dataclass(frozen=True)
class ReceivedMessage:
    """One accepted message, as it came over the wire."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    received_at: float
    message_id: str | None
    order_id: str | None

    def parsed(self) -> email.message.EmailMessage:
        """The full message (body and MIME parts), parsed on demand."""
        # With the default policy the parser builds EmailMessage, not the legacy Message.
        parser = BytesParser(_class=email.message.EmailMessage, policy=email.policy.default)
        return parser.parsebytes(self.data)


def _header(headers: email.message.Message, name: str) -> str | None:
    value = headers.get(name)
    text = "" if value is None else str(value).strip()
    return text or None


def _write_eml(mail_dir: Path, received_at_ns: int, data: bytes) -> Path:
    name = f"{received_at_ns}-{hashlib.sha256(data).hexdigest()[:12]}.eml"
    final = mail_dir / name
    temp = mail_dir / f".{name}.tmp"
    # Rename, so a reader polling the folder never sees half a message. No fsync: this is
    # a dev/test sink and surviving an OS crash is not its job.
    temp.write_bytes(data)
    os.replace(temp, final)
    return final


class _Handler:
    """The aiosmtpd handler; kept apart from MailSink because aiosmtpd scans every
    attribute of its handler for `handle_*`/`auth_*` hooks."""

    def __init__(self, sink: MailSink) -> None:
        self._sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str | bytes:
        return await self._sink._on_data(envelope)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        return await self._sink._on_rcpt(envelope, address)


class MailSink:
    """An SMTP server on `host:port` (0 = any free port) in the running event loop."""

    def __init__(
        self,
        mail_dir: Path | None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        policy: SmtpPolicy | None = None,
        rcpt_policy: RcptPolicy | None = None,
        tls: ssl.SSLContext | None = None,
        implicit_tls: bool = False,
    ) -> None:
        """`tls`: the server's context; clients must then STARTTLS before MAIL, or, with
        `implicit_tls`, speak TLS from the first byte (SMTPS)."""
        if implicit_tls and tls is None:
            raise ValueError("implicit_tls needs a tls context")
        self.mail_dir = mail_dir
        self.tls = tls
        self.implicit_tls = implicit_tls
        self.host = host
        self.policy = policy  # public so a test can switch faults on and off mid-run
        # Decides at RCPT time, before any message data is sent: stalling here models a slow
        # server from which nothing has been delivered yet.
        self.rcpt_policy = rcpt_policy
        #: What an accepted message is answered with: any 2xx text, or raw bytes (several
        #: lines, NUL, bytes that are not UTF-8), as odd relays answer.
        self.accepted_reply: str | bytes = _ACCEPTED
        self.messages: list[ReceivedMessage] = []
        self._requested_port = port
        self._port: int | None = None
        self._server: asyncio.Server | None = None
        self._received = asyncio.Condition()
        # Python 3.11's Server.close() leaves accepted connections open; we close them.
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("MailSink is not started")
        return self._port

    @property
    def url(self) -> str:
        if self.implicit_tls:
            return f"smtps://{self.host}:{self.port}"
        suffix = "?starttls=true" if self.tls is not None else ""
        return f"smtp://{self.host}:{self.port}{suffix}"

    async def start(self) -> None:
        """Listen in the current event loop; afterwards `port` and `url` are known."""
        if self._server is not None:
            return
        if self.mail_dir is not None:
            self.mail_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        handler = _Handler(self)

        def protocol() -> SMTP:
            # An explicit hostname: the default, socket.getfqdn(), can stall on DNS.
            smtp = SMTP(
                handler,
                hostname="acme-mail-sink",
                ident="acme mail sink",
                enable_SMTPUTF8=True,
                loop=loop,
                tls_context=None if self.implicit_tls else self.tls,
                require_starttls=self.tls is not None and not self.implicit_tls,
            )
            self._connections.add(smtp)
            return smtp

        self._server = await loop.create_server(
            protocol,
            host=self.host,
            port=self._requested_port,
            ssl=self.tls if self.implicit_tls else None,
        )
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and drop open connections (the port becomes free again)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        sessions = []
        for smtp in list(self._connections):
            if smtp.transport is not None:
                smtp.transport.close()
            # aiosmtpd keeps each connection's task privately; awaiting it here means no
            # task is left pending when the caller's loop closes.
            task = getattr(smtp, "_handler_coroutine", None)
            if task is not None:
                sessions.append(task)
        await server.wait_closed()
        if sessions:
            _ended, stuck = await asyncio.wait(sessions, timeout=_STOP_GRACE_S)
            # A session whose STARTTLS handshake failed keeps reading from a stream that its
            # closed transport no longer feeds: it would wait forever.
            for task in stuck:
                task.cancel()
            await asyncio.gather(*sessions, return_exceptions=True)
        self._connections.clear()

    async def wait_for(self, count: int, timeout_s: float) -> list[ReceivedMessage]:
        """Wait until at least `count` messages were accepted; return all received so far."""
        try:
            async with asyncio.timeout(timeout_s), self._received:
                await self._received.wait_for(lambda: len(self.messages) >= count)
        except TimeoutError:
            raise TimeoutError(
                f"mail sink got {len(self.messages)} of {count} messages in {timeout_s:g} s"
            ) from None
        return list(self.messages)

    async def _on_rcpt(self, envelope: Envelope, address: str) -> str:
        if self.rcpt_policy is not None:
            verdict = self.rcpt_policy(address)
            reply = await verdict if inspect.isawaitable(verdict) else verdict
            if reply is not None:
                return str(reply)
        envelope.rcpt_tos.append(address)
        return _ACCEPTED

    async def _on_data(self, envelope: Envelope) -> str | bytes:
        if self.policy is not None:
            verdict = self.policy(envelope)
            reply = await verdict if inspect.isawaitable(verdict) else verdict
            if reply is not None:
                return str(reply)
        received_at_ns = time.time_ns()
        data = envelope.original_content or b""
        # Headers only: cheap, and all the bookkeeping needs.
        headers = BytesHeaderParser().parsebytes(data)
        message = ReceivedMessage(
            mail_from=str(envelope.mail_from),
            rcpt_tos=tuple(str(rcpt) for rcpt in envelope.rcpt_tos),
            data=data,
            received_at=received_at_ns / 1e9,
            message_id=_header(headers, "Message-ID"),
            order_id=_header(headers, _ORDER_ID_HEADER),
        )
        if self.mail_dir is not None:
            try:
                _write_eml(self.mail_dir, received_at_ns, data)
            except OSError:
                # A transient refusal makes the sender retry instead of losing the mail.
                _log.exception("mail sink could not store a message in %s", self.mail_dir)
                return _STORE_FAILED
        async with self._received:
            self.messages.append(message)
            self._received.notify_all()
        return self.accepted_reply


async def run_sink_forever(mail_dir: Path | None, host: str = "127.0.0.1", port: int = 0) -> None:
    """Run a sink until cancelled: the body of a standalone `acme` mail-sink process."""
    sink = MailSink(mail_dir, host=host, port=port)
    await sink.start()
    _log.info("mail sink listening on %s, storing in %s", sink.url, mail_dir or "memory only")
    try:
        await asyncio.Event().wait()
    finally:
        await sink.stop()
