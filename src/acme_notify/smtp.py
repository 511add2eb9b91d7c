"""The notifier's SMTP client: relay settings and a pool of persistent connections.

What a failure means (retry, dead-letter, or the relay refusing us) is decided in
`acme_notify.replies`; rate limiting and the circuit breaker live in `acme_notify.flow`; this
module only talks SMTP. A session we end ourselves ends with QUIT, and a session whose server
refused one message (and whose envelope aiosmtplib reset) goes back to the pool.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import parse_qsl, unquote, urlsplit

import aiosmtplib
from aiosmtplib import SMTPResponse

from acme_notify.errors import PermanentError, TransientError
from acme_notify.replies import classify
from acme_runtime.text import printable

__all__ = ["SMTP_REPLY_MAX_CHARS", "SmtpConfig", "SmtpPool", "classify"]

#: Longest server reply kept (the ledger holds what the server said, for `acme trace`).
SMTP_REPLY_MAX_CHARS: Final = 500
#: A polite QUIT may take this long before the connection is simply closed.
_QUIT_TIMEOUT_S: Final = 1.0
_STARTTLS = {"true": True, "false": False, "opportunistic": None}
_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{sep}{authority}{slash}{tail}"


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """Where and how to reach the relay; `start_tls` None means opportunistic STARTTLS."""

    host: str
    port: int
    timeout_s: float
    pool_size: int
    use_tls: bool = False
    start_tls: bool | None = False
    verify_certs: bool = True
    #: A CA bundle to trust instead of the system's (a relay with a private CA); None: system.
    ca_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: The name we give in EHLO: strict relays refuse one that is not fully qualified.
    helo_name: str = "localhost"

    @property
    def peer(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_url(
        cls, url: str, *, timeout_s: float, pool_size: int, helo_name: str = "localhost"
    ) -> SmtpConfig:
        """smtp://[user:pass@]host[:port][?starttls=true|false|opportunistic][&verify=false]
        [&cafile=/path/ca.pem], or smtps://… for implicit TLS. The certificate is verified
        (chain and host name) unless verify=false, against `cafile` or the system's CAs."""

        def bad(why: str) -> ValueError:
            return ValueError(f"bad SMTP URL {_redact(url)!r}: {why}")

        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps"):
            raise bad("the scheme must be smtp:// or smtps://")
        if not parts.hostname:
            raise bad("no host")
        if parts.path not in ("", "/") or parts.fragment:
            raise bad("unexpected path or fragment")
        try:
            port = parts.port
            query = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
        except ValueError as exc:
            raise bad(str(exc)) from None
        unknown = set(query) - {"starttls", "verify", "cafile"}
        if unknown:
            raise bad(f"unknown parameter(s) {', '.join(sorted(unknown))}")
        starttls, verify = query.get("starttls", "false"), query.get("verify", "true")
        if starttls.lower() not in _STARTTLS or verify.lower() not in _BOOL:
            raise bad("starttls must be true/false/opportunistic, verify true/false")
        start_tls = _STARTTLS[starttls.lower()]
        use_tls = parts.scheme == "smtps"
        if use_tls and start_tls is not False:
            raise bad("smtps:// already uses TLS; starttls applies to smtp:// only")
        ca_file = query.get("cafile") or None
        if ca_file is not None and not use_tls and start_tls is False:
            raise bad("cafile applies to TLS: use smtps:// or starttls=true")
        if timeout_s <= 0 or pool_size < 1:
            raise ValueError(f"need timeout_s > 0 and pool_size >= 1, got {timeout_s}, {pool_size}")
        return cls(
            host=parts.hostname,
            port=port or (465 if use_tls else 587 if start_tls else 25),
            timeout_s=timeout_s,
            pool_size=pool_size,
            use_tls=use_tls,
            start_tls=start_tls,
            verify_certs=_BOOL[verify.lower()],
            ca_file=ca_file,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
            helo_name=helo_name,
        )


class _Client(aiosmtplib.SMTP):
    """Remembers how far the current transaction got: until the server answered MAIL, a
    dropped connection cannot have delivered anything, so trying again is safe; once DATA
    began, a failure without an answer leaves the outcome unknown (the server may have
    accepted the message)."""

    mail_answered = False
    data_started = False

    async def mail(self, *args: Any, **kwargs: Any) -> SMTPResponse:
        response = await super().mail(*args, **kwargs)
        self.mail_answered = True
        return response

    async def data(self, *args: Any, **kwargs: Any) -> SMTPResponse:
        self.data_started = True
        return await super().data(*args, **kwargs)


class _Attempt:
    """The client one send used, so a failure can be told apart after the fact."""

    client: _Client | None = None

    @property
    def data_sent(self) -> bool:
        return self.client is not None and self.client.data_started


class SmtpPool:
    """Up to `config.pool_size` persistent connections, opened lazily and reused (LIFO)."""

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config
        self._slots = asyncio.Semaphore(config.pool_size)
        self._idle: list[_Client] = []
        self._size = 0
        self._in_use = 0
        self._opened = 0
        self._closed = False
        self._tls_context: ssl.SSLContext | None = None

    @property
    def in_use(self) -> int:
        """Sends currently holding a slot."""
        return self._in_use

    @property
    def size(self) -> int:
        """Open (or opening) connections, idle or busy."""
        return self._size

    @property
    def opened(self) -> int:
        """Connections opened since start (a counter: reuse keeps it low)."""
        return self._opened

    async def send(self, sender: str, recipients: list[str], data: bytes) -> str:
        """Deliver `data` as is; return the server's final reply, e.g. "250 OK", or raise
        TransientError / PermanentError. Waiting for a free connection is not bounded (the
        provider's rate limit is `Delivery`'s, waited for before this); the SMTP exchange
        itself is bounded by `timeout_s`."""
        if self._closed:
            raise RuntimeError("SmtpPool is closed")
        async with self._slots:
            self._in_use += 1
            attempt = _Attempt()
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    return await self._send_once(sender, recipients, data, attempt)
            except (TransientError, PermanentError):
                raise
            except TimeoutError as exc:
                reason = f"timed out after {self.config.timeout_s:g} s ({self.config.peer})"
                raise TransientError(reason, server_down=True, ambiguous=attempt.data_sent) from exc
            except Exception as exc:
                verdict = classify(exc, peer=self.config.peer)
                if isinstance(verdict, TransientError) and isinstance(exc, ConnectionError):
                    verdict.ambiguous = attempt.data_sent
                raise verdict from exc
            finally:
                self._in_use -= 1

    async def close(self) -> None:
        """QUIT idle connections; busy ones are closed when their send finishes."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(client) for client in idle))

    async def _send_once(
        self, sender: str, recipients: list[str], data: bytes, attempt: _Attempt
    ) -> str:
        client = self._take_idle()
        if client is not None:
            attempt.client = client
            try:
                return await self._transact(client, sender, recipients, data)
            except ConnectionError:  # SMTPServerDisconnected, or a reset while writing
                if client.mail_answered:
                    raise
                # The server dropped this connection while it sat idle (restart, idle
                # timeout): not a failed delivery, so go on with a fresh connection.
        attempt.client = await self._connect()
        return await self._transact(attempt.client, sender, recipients, data)

    async def _transact(
        self, client: _Client, sender: str, recipients: list[str], data: bytes
    ) -> str:
        client.mail_answered = client.data_started = False
        try:
            _refused, message = await client.sendmail(sender, recipients, data)
        except ValueError as exc:  # aiosmtplib refused an address before sending anything
            await self._release(client)
            raise PermanentError(
                printable(str(exc), SMTP_REPLY_MAX_CHARS), reason_class="invalid_recipient"
            ) from exc
        except aiosmtplib.SMTPResponseException as exc:
            # The server answered, and aiosmtplib reset the envelope (RSET): the session is
            # good for the next message, unless the server is closing it (421).
            if exc.code == 421:
                await self._quit(client)
            else:
                await self._release(client)
            raise
        except aiosmtplib.SMTPRecipientsRefused:
            await self._release(client)
            raise
        except BaseException:
            # Includes cancellation by the timeout: the session state is unknown, and a QUIT
            # could land inside a half-sent message, so the connection is just closed.
            self._discard(client)
            raise
        await self._release(client)
        # sendmail only returns when DATA was answered 250; it hands back the text alone,
        # which may hold any bytes and lines: what we keep of it must fit every store.
        return printable(f"250 {message}", SMTP_REPLY_MAX_CHARS)

    async def _release(self, client: _Client) -> None:
        """A connection in a known state after a transaction: back to the pool, or QUIT."""
        if not client.is_connected:
            self._discard(client)
        elif self._closed:
            await self._quit(client)
        else:
            self._idle.append(client)

    def _take_idle(self) -> _Client | None:
        while self._idle:
            client = self._idle.pop()
            if client.is_connected:
                return client
            self._discard(client)  # the server closed it while idle, and we noticed
        return None

    async def _connect(self) -> _Client:
        config = self.config
        if self._tls_context is None and (config.use_tls or config.start_tls is not False):
            self._tls_context = await asyncio.to_thread(self._build_tls_context)
        client = _Client(
            hostname=config.host,
            port=config.port,
            username=config.username,
            password=config.password,
            # Always explicit: aiosmtplib's default, socket.getfqdn(), can stall on DNS.
            local_hostname=config.helo_name,
            timeout=config.timeout_s,
            use_tls=config.use_tls,
            start_tls=config.start_tls,
            tls_context=self._tls_context,
        )
        self._size += 1
        self._opened += 1
        try:
            await client.connect()
        except aiosmtplib.SMTPResponseException as exc:
            # Refused while opening the session (greeting, EHLO, STARTTLS, AUTH): the server
            # is talking, so say goodbye properly.
            await self._quit(client)
            raise classify(exc, peer=config.peer, session=True) from exc
        except BaseException:
            self._discard(client)
            raise
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # Python 3.11's asyncio.wait_for (used by aiosmtplib's connect) can swallow a
            # cancellation that lands as the connection completes (CPython gh-86296). Left
            # alone, a "cancelled" send would go on to deliver: honour the cancel here.
            self._discard(client)
            raise asyncio.CancelledError
        return client

    def _build_tls_context(self) -> ssl.SSLContext:
        # Once per pool: loading the CA store for every connection would cost milliseconds.
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.config.ca_file)
        if not self.config.verify_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _discard(self, client: _Client) -> None:
        client.close()
        self._size -= 1

    async def _quit(self, client: _Client) -> None:
        try:
            async with asyncio.timeout(min(self.config.timeout_s, _QUIT_TIMEOUT_S)):
                await client.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass  # closing anyway; a polite QUIT is best effort
        finally:
            self._discard(client)
