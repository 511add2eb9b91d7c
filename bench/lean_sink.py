"""A lean SMTP responder for throughput benchmarks: the provider's stand-in at a fraction of the
CPU of aiosmtpd (`acme_cli.smtp_sink`).

On one 2-core box the stand-in competes with the senders it measures: aiosmtpd spends ~0.6-0.7
CPU-ms per message (a coroutine per command, a full parse of every message), which at 1,000
e-mails/s is a third of the machine. A real provider costs the sender nothing of its own
CPU. This responder speaks just enough ESMTP for a well-behaved client (EHLO with PIPELINING,
SIZE and 8BITMIME; MAIL, RCPT, DATA, RSET, NOOP, QUIT; STARTTLS and AUTH are not offered),
answers pipelined commands in order, and keeps of each message what the benchmarks read:
its `X-Acme-Order-Id` and `Message-ID` headers and the time DATA ended. Anything else gets a
`502`. Loopback only, as every benchmark server (`bench/sink_recorder.py --lean`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Final, cast

__all__ = ["LeanMessage", "LeanSink"]

_GREETING: Final = b"220 lean-sink ESMTP\r\n"
_EHLO: Final = b"250-lean-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10485760\r\n"
_OK: Final = b"250 OK\r\n"
_DATA: Final = b"354 End data with <CR><LF>.<CR><LF>\r\n"
_BYE: Final = b"221 Bye\r\n"
_UNKNOWN: Final = b"502 5.5.2 Command not implemented\r\n"
_END_OF_DATA: Final = b"\r\n.\r\n"
#: Longest command line, and longest message, kept before the connection is dropped.
_MAX_LINE_BYTES: Final = 4_096
_MAX_MESSAGE_BYTES: Final = 10 * 1024 * 1024
#: Only the headers are searched for the two ids.
_HEADER_END: Final = b"\r\n\r\n"


@dataclass(frozen=True, slots=True)
class LeanMessage:
    order_id: str | None
    message_id: str | None
    received_at: float


def _header(head: bytes, name: bytes) -> str | None:
    """The value of header `name` (case-insensitive, unfolded headers only) in `head`."""
    lowered = b"\r\n" + head.lower()
    start = lowered.find(b"\r\n" + name.lower() + b":")
    if start < 0:
        return None
    value_start = start + len(name) + 1  # in `head`: the "\r\n" prefix offsets the 2 back
    end = head.find(b"\r\n", value_start)
    value = head[value_start : end if end >= 0 else len(head)].strip()
    return value.decode("ascii", "replace") or None


class _Session(asyncio.Protocol):
    def __init__(self, sink: LeanSink) -> None:
        self._sink = sink
        self._buffer = bytearray()
        self._in_data = False
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is not an asyncio.Transport subclass, but behaves as one).
        self._transport = cast(asyncio.Transport, transport)
        self._sink.sessions.add(self._transport)
        self._transport.write(_GREETING)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._sink.sessions.discard(self._transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        replies = bytearray()
        while True:
            if self._in_data:
                end = self._buffer.find(_END_OF_DATA)
                if end < 0:
                    if len(self._buffer) > _MAX_MESSAGE_BYTES:
                        self._drop()
                    break
                self._accept(bytes(self._buffer[: end + 2]))
                del self._buffer[: end + len(_END_OF_DATA)]
                self._in_data = False
                replies += _OK
                continue
            line_end = self._buffer.find(b"\r\n")
            if line_end < 0:
                if len(self._buffer) > _MAX_LINE_BYTES:
                    self._drop()
                break
            verb = bytes(self._buffer[:4]).upper()
            del self._buffer[: line_end + 2]
            if verb in (b"EHLO", b"HELO"):
                replies += _EHLO if verb == b"EHLO" else _OK
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                replies += _OK
            elif verb == b"DATA":
                self._in_data = True
                replies += _DATA
            elif verb == b"QUIT":
                replies += _BYE
                if self._transport is not None:
                    self._transport.write(bytes(replies))
                    self._transport.close()
                return
            else:
                replies += _UNKNOWN
        if replies and self._transport is not None:
            self._transport.write(bytes(replies))

    def _accept(self, message: bytes) -> None:
        head_end = message.find(_HEADER_END)
        head = message[: head_end if head_end >= 0 else len(message)]
        self._sink.messages.append(
            LeanMessage(
                order_id=_header(head, b"X-Acme-Order-Id"),
                message_id=_header(head, b"Message-ID"),
                received_at=time.time(),
            )
        )

    def _drop(self) -> None:
        if self._transport is not None:
            self._transport.close()


@dataclass
class LeanSink:
    """Listens on `host:port` (loopback); `messages` grows as messages are accepted."""

    host: str
    port: int
    messages: list[LeanMessage] = field(default_factory=list)
    sessions: set[asyncio.Transport] = field(default_factory=set)
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Session(self), self.host, self.port, reuse_address=True
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for transport in list(self.sessions):
                transport.close()
            await self._server.wait_closed()
            self._server = None
