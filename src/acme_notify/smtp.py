"""The notifier's SMTP client: relay settings, a pool of persistent connections, and the
mapping from every SMTP or network failure to `TransientError` / `PermanentError`.

Rate limiting and the circuit breaker live in `acme_notify.flow`; this module only talks SMTP.
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import aiosmtplib
from aiosmtplib import SMTPResponse

from acme_notify.errors import PermanentError, TransientError
from acme_notify.flow import TokenBucket

__all__ = ["SmtpConfig", "SmtpPool", "classify"]

# RFC 3463 enhanced status code at the start of a reply text: class.subject.detail.
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
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
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    local_hostname: str | None = None

    @property
    def peer(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @classmethod
    def from_url(cls, url: str, *, timeout_s: float, pool_size: int) -> SmtpConfig:
        """smtp://[user:pass@]host[:port][?starttls=true|false|opportunistic][&verify=false],
        or smtps://… for implicit TLS."""

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
        unknown = set(query) - {"starttls", "verify"}
        if unknown:
            raise bad(f"unknown parameter(s) {', '.join(sorted(unknown))}")
        starttls, verify = query.get("starttls", "false"), query.get("verify", "true")
        if starttls.lower() not in _STARTTLS or verify.lower() not in _BOOL:
            raise bad("starttls must be true/false/opportunistic, verify true/false")
        start_tls = _STARTTLS[starttls.lower()]
        use_tls = parts.scheme == "smtps"
        if use_tls and start_tls is not False:
            raise bad("smtps:// already uses TLS; starttls applies to smtp:// only")
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
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password is not None else None,
        )


def _first_line(text: str, limit: int = 200) -> str:
    return text.strip().splitlines()[0][:limit] if text.strip() else ""


def _by_reply(
    code: int, message: str, *, recipient: bool = False
) -> TransientError | PermanentError:
    reason = f"{code} {_first_line(message)}".strip()
    enhanced = _ENHANCED.match(message.lstrip())
    status_class = int(enhanced.group(1)) if enhanced else 0
    # The enhanced code is the more specific verdict, so it wins when it has one.
    permanent = status_class == 5 if status_class in (4, 5) else 500 <= code <= 599
    if not permanent:
        return TransientError(reason, server_down=code == 421)
    if enhanced:
        # 5.1.x is "addressing status"; 5.1.7/5.1.8 are about our sender, not the recipient.
        bad_address = enhanced.group(2) == "1" and enhanced.group(3) not in ("7", "8")
    else:
        bad_address = recipient and code in (550, 551, 553)
    return PermanentError(
        reason, reason_class="invalid_recipient" if bad_address else "smtp_permanent"
    )


def classify(exc: BaseException, *, peer: str | None = None) -> TransientError | PermanentError:
    """Map a failure from sending to the retry verdict; `peer` ("host:port") goes into
    network-error reasons. Reasons never carry credentials."""
    if isinstance(exc, TransientError | PermanentError):
        return exc
    where = f" ({peer})" if peer else ""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        verdicts = [_by_reply(r.code, r.message, recipient=True) for r in exc.recipients]
        # If any recipient may succeed later, retry rather than dead-letter the message.
        return next((v for v in verdicts if isinstance(v, TransientError)), verdicts[0])
    if isinstance(exc, aiosmtplib.SMTPRecipientRefused):
        return _by_reply(exc.code, exc.message, recipient=True)
    if isinstance(
        exc,
        aiosmtplib.SMTPConnectResponseError
        | aiosmtplib.SMTPHeloError
        | aiosmtplib.SMTPAuthenticationError,
    ):
        # Refused greeting, EHLO or AUTH: the session failed, not this message, so
        # dead-lettering would be wrong; the breaker holds everything until it is fixed.
        kind = type(exc).__name__.removeprefix("SMTP").removesuffix("Error").lower()
        return TransientError(
            f"{kind} refused: {exc.code} {_first_line(exc.message)}{where}", server_down=True
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return _by_reply(exc.code, exc.message)
    if isinstance(exc, TimeoutError):  # SMTPTimeoutError and asyncio's are TimeoutErrors
        return TransientError(f"timed out{where}", server_down=True)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return TransientError(f"connection lost{where}", server_down=True)
    if isinstance(exc, aiosmtplib.SMTPConnectError):
        cause = exc.__cause__
        if isinstance(cause, OSError):
            return classify(cause, peer=peer)
        return TransientError(
            f"connect failed{where}: {_first_line(exc.message)}", server_down=True
        )
    if isinstance(exc, ssl.SSLError):
        detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc
        return TransientError(f"tls error{where}: {detail}", server_down=True)
    if isinstance(exc, ConnectionRefusedError):
        return TransientError(f"connection refused{where}", server_down=True)
    if isinstance(exc, OSError):
        return TransientError(f"network error{where}: {exc.strerror or exc}", server_down=True)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        # e.g. STARTTLS required but not offered: a relay/config problem, not the message's.
        return TransientError(f"not supported by server{where}: {exc.message}", server_down=True)
    return TransientError(f"unexpected {type(exc).__name__}: {_first_line(str(exc))}")


class _Client(aiosmtplib.SMTP):
    """Remembers whether the server answered MAIL in the current transaction: until it has,
    a dropped connection cannot have delivered anything, so trying again is safe."""

    mail_answered = False

    async def mail(self, *args: Any, **kwargs: Any) -> SMTPResponse:
        response = await super().mail(*args, **kwargs)
        self.mail_answered = True
        return response


class SmtpPool:
    """Up to `config.pool_size` persistent connections, opened lazily and reused (LIFO)."""

    def __init__(self, config: SmtpConfig, *, rate: TokenBucket | None = None) -> None:
        self.config = config
        self._rate = rate
        self._slots = asyncio.Semaphore(config.pool_size)
        self._idle: list[_Client] = []
        self._size = 0
        self._in_use = 0
        self._opened = 0
        self._closed = False
        self._tls_context: ssl.SSLContext | None = None
        # An explicit EHLO name: aiosmtplib's default, socket.getfqdn(), can stall on DNS.
        self._helo = config.local_hostname or socket.gethostname() or "localhost"

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
        TransientError / PermanentError. Waiting for the rate limit or a free connection is
        not bounded; the SMTP exchange itself is bounded by `timeout_s`."""
        if self._closed:
            raise RuntimeError("SmtpPool is closed")
        if self._rate is not None:
            await self._rate.acquire()
        async with self._slots:
            self._in_use += 1
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    return await self._send_once(sender, recipients, data)
            except (TransientError, PermanentError):
                raise
            except TimeoutError as exc:
                reason = f"timed out after {self.config.timeout_s:g} s ({self.config.peer})"
                raise TransientError(reason, server_down=True) from exc
            except Exception as exc:
                raise classify(exc, peer=self.config.peer) from exc
            finally:
                self._in_use -= 1

    async def close(self) -> None:
        """QUIT idle connections; busy ones are closed when their send finishes."""
        self._closed = True
        idle, self._idle = self._idle, []
        await asyncio.gather(*(self._quit(client) for client in idle))

    async def _send_once(self, sender: str, recipients: list[str], data: bytes) -> str:
        client = self._take_idle()
        if client is not None:
            try:
                return await self._transact(client, sender, recipients, data)
            except ConnectionError:  # SMTPServerDisconnected, or a reset while writing
                if client.mail_answered:
                    raise
                # The server dropped this connection while it sat idle (restart, idle
                # timeout): not a failed delivery, so go on with a fresh connection.
        return await self._transact(await self._connect(), sender, recipients, data)

    async def _transact(
        self, client: _Client, sender: str, recipients: list[str], data: bytes
    ) -> str:
        client.mail_answered = False
        try:
            _refused, message = await client.sendmail(sender, recipients, data)
        except ValueError as exc:  # aiosmtplib refused an address before sending anything
            self._discard(client)
            raise PermanentError(str(exc), reason_class="invalid_recipient") from exc
        except BaseException:
            # Includes cancellation by the timeout: the session state is unknown now.
            self._discard(client)
            raise
        if self._closed or not client.is_connected:
            self._discard(client)
        else:
            self._idle.append(client)
        # sendmail only returns when DATA was answered 250; it hands back the text alone.
        return f"250 {message}"

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
            local_hostname=self._helo,
            timeout=config.timeout_s,
            use_tls=config.use_tls,
            start_tls=config.start_tls,
            tls_context=self._tls_context,
        )
        self._size += 1
        self._opened += 1
        try:
            await client.connect()
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # Python 3.11's asyncio.wait_for (used by aiosmtplib's connect) can swallow a
                # cancellation that lands as the connection completes (CPython gh-86296). Left
                # alone, a "cancelled" send would go on to deliver: honour the cancel here.
                raise asyncio.CancelledError
        except BaseException:
            self._discard(client)
            raise
        return client

    def _build_tls_context(self) -> ssl.SSLContext:
        # Once per pool: loading the CA store for every connection would cost milliseconds.
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if not self.config.verify_certs:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _discard(self, client: _Client) -> None:
        client.close()
        self._size -= 1

    async def _quit(self, client: _Client) -> None:
        try:
            async with asyncio.timeout(min(self.config.timeout_s, 1.0)):
                await client.quit()
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            pass  # closing anyway; a polite QUIT is best effort
        finally:
            self._discard(client)
