"""What an SMTP failure means for one e-mail: retry it, dead-letter it, or stop blaming it.

Every failure of a send ends here, as one of three verdicts (see `acme_notify.errors`):

* `TransientError`: try this e-mail again later (4xx; network, timeout and TLS failures). A
  421, a lost or refused connection and a timeout also mark the server as down (`server_down`:
  the breaker counts it, the try is given back).
* `ProviderError`: a permanent refusal about **us**: the session, our HELO name, credentials,
  the sender address or domain, relay access, TLS, our IP's reputation. Every e-mail would meet
  it, so it must not dead-letter any: the breaker opens, tries are given back, and the mail goes
  out by itself once the relay or our configuration is fixed.
* `PermanentError`: a permanent refusal about **this** recipient or message (unknown mailbox,
  mailbox full or disabled, a policy on that recipient): dead-letter this e-mail alone.

The rule follows RFC 5321 reply codes and RFC 3463 enhanced status codes (class.subject.detail),
the enhanced code winning when there is one; it is spelled out, with the codes treated as
ambiguous, in docs/reliability.md ("Whose fault is a 5xx?"). Ambiguous refusals count as the
recipient's; `acme_notify.flow.RefusalStorm` catches the misconfigured relay that gives the
same ambiguous refusal to everyone.
"""

from __future__ import annotations

import re
import ssl
from typing import Final, Literal

import aiosmtplib

from acme_notify.errors import PermanentError, ProviderError, TransientError
from acme_runtime.logs import mask_addresses
from acme_runtime.text import printable

__all__ = ["Stage", "classify", "refusal_key", "verdict"]

#: Where in the SMTP session the reply came: it tells whose problem a refusal is.
Stage = Literal["greeting", "helo", "session", "auth", "mail", "rcpt", "data", "unknown"]

#: Longest reply text kept in a reason (the first line only).
REASON_MAX_CHARS: Final = 200

# RFC 3463 enhanced status code at the start of a reply text: class.subject.detail.
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")

#: Stages where a permanent refusal can only be about the session or the sender: us.
_SESSION_STAGES: Final = frozenset({"greeting", "helo", "session", "auth", "mail"})

#: Reply codes about the session rather than any recipient (RFC 5321 4.2.3; 530/534/535/538
#: from RFC 4954): syntax and sequence errors, authentication required or failed.
_SESSION_CODES: Final = frozenset({500, 501, 502, 503, 504, 530, 534, 535, 538, 555})

#: X.7.y security details about us (RFC 3463, RFC 7372, RFC 7505, RFC 8689 registry): security
#: or auth status, credentials, encryption, trust, priority, DKIM/SPF/DMARC of our domain,
#: reverse DNS of our IP, our null MX, our mail volume, ARC, REQUIRETLS. Left to the recipient:
#: 1 (not authorized: ambiguous, see the text), 2 (list expansion), 17 and 18 (mailbox or domain
#: owner changed), 19 (the recipient's valid-since test).
_SECURITY_ABOUT_US: Final = frozenset(
    {0, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30}
)

#: Words by which relays say, with an ambiguous code (5.7.1, 5.0.0, 554, 550 ...), that they
#: refuse the sender, not the recipient.
_ABOUT_US_WORDS: Final = re.compile(
    r"relay|client host|your ip|sender address|sender domain|\bsender\b.*\b(?:rejected|denied)"
    r"|\bhelo\b|\behlo\b|authenticat|starttls|tls required|encryption required"
    r"|not authori[sz]ed to send|\bspf\b|\bdkim\b|\bdmarc\b|reverse dns|\bptr\b"
    r"|blocked using|listed (?:at|on|in)|block ?list|black ?list",
    re.IGNORECASE,
)


def _first_line(text: str) -> str:
    """The reply's first line, printable, with the addresses it quotes masked: a reason goes
    into dead letters, receipts, the order's timeline and logs, which show no full address."""
    stripped = text.strip()
    if not stripped:
        return ""
    return printable(mask_addresses(stripped.splitlines()[0]), REASON_MAX_CHARS)


def verdict(code: int, text: str, stage: Stage = "unknown") -> TransientError | PermanentError:
    """The verdict on one failed reply `code` with its `text`, given at `stage`."""
    reason = f"{code} {_first_line(text)}".strip()
    enhanced = _ENHANCED.match(text.lstrip())
    if enhanced:
        status_class, subject, detail = (int(group) for group in enhanced.groups())
    else:
        status_class, subject, detail = code // 100, 0, 0
    if status_class != 5:
        # The enhanced code is the more specific verdict, so a 550 4.7.0 is only "later".
        return TransientError(reason, server_down=code == 421)
    if stage in _SESSION_STAGES or _about_us(code, subject, detail, text):
        return ProviderError(reason)
    bad_address = subject == 1 if enhanced else stage == "rcpt" and code in (550, 551, 553)
    return PermanentError(
        reason, reason_class="invalid_recipient" if bad_address else "smtp_permanent"
    )


def _about_us(code: int, subject: int, detail: int, text: str) -> bool:
    if subject == 0:  # no enhanced code, or X.0.0: only the reply code and the words tell
        return code in _SESSION_CODES or bool(_ABOUT_US_WORDS.search(text))
    if subject in (3, 5):  # mail system status, protocol status: the relay's or ours
        return True
    if subject == 1:  # addressing: about the recipient, except our sender's (X.1.7, X.1.8)
        return detail in (7, 8)
    if subject == 7:
        return detail in _SECURITY_ABOUT_US or (detail == 1 and bool(_ABOUT_US_WORDS.search(text)))
    if subject == 4:  # routing: a directory failure or a loop is the relay's
        return detail in (3, 6) or bool(_ABOUT_US_WORDS.search(text))
    return False  # X.2.x mailbox status, X.6.x this message's content


def refusal_key(reason: str) -> str:
    """`reason` without what differs per recipient (addresses, bracketed parts, numbers), so
    that one relay answering the same thing to every recipient gives one key."""
    match = re.match(r"(\d{3})(?:\s+([245]\.\d{1,3}\.\d{1,3}))?\s*(.*)", reason, re.DOTALL)
    if match is None:
        return reason[:120].lower()
    code, enhanced, rest = match.groups()
    rest = re.sub(r"<[^>]*>|\S+@\S+|\[[^\]]*\]|\b[\w.-]*\d[\w.-]*\b", "", rest)
    rest = " ".join(rest.lower().split())[:120]
    return f"{code} {enhanced or ''} {rest}".replace("  ", " ")


_STAGE_OF: Final[tuple[tuple[type[aiosmtplib.SMTPResponseException], Stage], ...]] = (
    (aiosmtplib.SMTPConnectResponseError, "greeting"),
    (aiosmtplib.SMTPHeloError, "helo"),
    (aiosmtplib.SMTPAuthenticationError, "auth"),
    (aiosmtplib.SMTPSenderRefused, "mail"),
    (aiosmtplib.SMTPRecipientRefused, "rcpt"),
    (aiosmtplib.SMTPDataError, "data"),
)


def _stage(exc: aiosmtplib.SMTPResponseException) -> Stage:
    return next((stage for kind, stage in _STAGE_OF if isinstance(exc, kind)), "unknown")


def classify(
    exc: BaseException, *, peer: str | None = None, session: bool = False
) -> TransientError | PermanentError:
    """Map a failure from sending to its verdict; `peer` ("host:port") goes into network-error
    reasons; `session` says the failure came while opening the session (greeting, EHLO,
    STARTTLS, AUTH), before any message. Reasons never carry credentials."""
    if isinstance(exc, TransientError | PermanentError):
        return exc
    where = f" ({peer})" if peer else ""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        verdicts = [verdict(r.code, r.message, "rcpt") for r in exc.recipients]
        # A refusal about us wins (nothing can succeed); then one that may succeed later.
        return next(
            (v for v in verdicts if isinstance(v, ProviderError)),
            next((v for v in verdicts if isinstance(v, TransientError)), verdicts[0]),
        )
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        stage = _stage(exc)
        if stage == "unknown" and session:
            stage = "session"
        found = verdict(exc.code, exc.message, stage)
        if stage in ("greeting", "helo", "auth", "session"):
            # The session failed, not this message: never a dead letter.
            label = f"{stage} refused: {found.reason}{where}"
            if isinstance(found, ProviderError):
                return ProviderError(label)
            return TransientError(label, server_down=True)
        return found
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
        # e.g. STARTTLS required but not offered: a relay or configuration problem, ours.
        return ProviderError(f"not supported by server{where}: {_first_line(exc.message)}")
    return TransientError(f"unexpected {type(exc).__name__}: {_first_line(str(exc))}")
