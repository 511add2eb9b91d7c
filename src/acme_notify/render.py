"""The order-confirmation e-mail: templates, locale formatting and the exact bytes sent by SMTP.

Owns the four templates under `acme_notify/templates`, the per-locale wording of the subject, and
the assembly of the RFC 5322 / MIME message. `Renderer` is built once per process (it compiles
the templates and caches per-locale and per-currency formatting); `Renderer.render` turns an
`Envelope` into a `RenderedMessage` ready for `MAIL FROM` / `RCPT TO` / `DATA`.

Choices worth knowing:

* The bytes are assembled by hand, not with `email.message.EmailMessage`, which costs ~2.3 ms a
  message against a budget of 0.3 ms. The tests parse the output with the standard parser.
* Everything is deterministic in the envelope: Message-ID, MIME boundary and Date come from the
  event, so a redelivered event yields byte-identical mail and receivers can deduplicate it.
* Date is the event's `occurred_at` (when the order was confirmed), not the time of sending, for
  that determinism; the transit delay is visible in the Received headers.
* The order reference in the subject is the *last* 8 hex digits of the order id, upper-cased.
  Order ids are UUIDv7, whose first 8 hex digits are the top of a millisecond timestamp: they
  change only every 65.5 s, so every order placed in the same minute would share them. The last 8
  are random bits. The full id is in the body and in `X-Acme-Order-Id` for support.
* Anything from the envelope that reaches a header has every control, format, line and paragraph
  separator character (Cc, Cf, Zl, Zp, and lone surrogates) replaced by a space, and non-ASCII or
  long text is RFC 2047 encoded, so no value can start a header line of its own. The API already
  rejects such characters; this is defence in depth against any other producer of events.
* Recipients must be plain ASCII addr-specs after IDNA-encoding the domain; anything else (a
  non-ASCII local part would need SMTPUTF8) is a `PermanentError` with reason `invalid_recipient`.
"""

from __future__ import annotations

import binascii
import hashlib
import re
import unicodedata
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from email.utils import format_datetime, parseaddr
from typing import Any, Final, NamedTuple

import idna
import jinja2
import msgspec
from babel import Locale
from babel.dates import format_date
from babel.numbers import (
    format_currency,
    get_currency_precision,
    get_decimal_symbol,
    get_group_symbol,
)

from acme_notify.envelope import Envelope
from acme_notify.errors import PermanentError

__all__ = ["DEFAULT_LOCALE", "SUPPORTED_LOCALES", "RenderedMessage", "Renderer", "order_reference"]

#: Locales the e-mail is written in; anything else is rendered in the default, the first one.
SUPPORTED_LOCALES: Final = ("pt-BR", "en-US")
DEFAULT_LOCALE: Final = "pt-BR"

_SUBJECTS: Final = {"pt-BR": "Pedido {ref} confirmado", "en-US": "Order {ref} confirmed"}
# The order date is shown as a calendar date in the zone the templates name. Brazil has had no
# daylight saving time since 2019, so Brasília time is a fixed UTC-3 and needs no tz database.
# For en-US there is no single right zone, so the template says UTC.
_DISPLAY_ZONES: Final[dict[str, tzinfo]] = {
    "pt-BR": timezone(timedelta(hours=-3)),
    "en-US": UTC,
}
# Lenient spellings seen in the wild (the API normalises, other producers may not).
_LOCALE_ALIASES: Final = {
    "pt": "pt-BR",
    "pt-br": "pt-BR",
    "pt_br": "pt-BR",
    "en": "en-US",
    "en-us": "en-US",
    "en_us": "en-US",
}

# RFC 5322 says lines SHOULD be at most 78 characters; we keep every header line within that
# except a To line carrying a very long address (still far below the 998 hard limit).
_MAX_HEADER_LINE_CHARS: Final = 78
# A display name longer than this is cut: nobody's name is, and it bounds the header size.
_MAX_DISPLAY_NAME_CHARS: Final = 200
# 36 bytes -> 48 base64 characters -> a 60-character encoded word (RFC 2047 allows 75), so that
# our longest header name, "X-Acme-Order-Id: ", plus one word stays within 78.
_ENCODED_WORD_MAX_BYTES: Final = 36
# Longer ASCII words are encoded too, so that folding can keep every line within 78.
_MAX_PLAIN_WORD_CHARS: Final = 60
_MAX_DATE_CACHE_ENTRIES: Final = 4096
_MAX_MONEY_CACHE_ENTRIES: Final = 1024  # ~300 ISO currencies x 2 locales fit

_HEADER_UNSAFE: Final = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
# Bodies drop the same characters (bidi overrides could visually reorder a price line) except the
# two joiners, which cannot reorder anything and hold emoji sequences and Indic/Persian words.
_BODY_UNSAFE: Final = _HEADER_UNSAFE
_BODY_KEEP: Final = frozenset({"\u200c", "\u200d"})

_ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_LOCAL_PART_RE: Final = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*")
_DOMAIN_RE: Final = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z0-9-]{2,63}"
)
# Words left as they are in headers: atoms in a display name, any printable ASCII elsewhere.
_PLAIN_PHRASE_WORD_RE: Final = re.compile(rf"{_ATEXT}+")
_PLAIN_TEXT_WORD_RE: Final = re.compile(r"[!-~]+")
_ID_LEFT_RE: Final = re.compile(r"[A-Za-z0-9-]{1,128}")


class RenderedMessage(msgspec.Struct, frozen=True):
    """One e-mail ready for SMTP: envelope addresses, Message-ID and the CRLF-terminated bytes."""

    sender: str
    recipient: str
    message_id: str
    data: bytes


class _Line(NamedTuple):
    """One table row as the templates see it: every field already formatted for the locale."""

    name: str
    quantity: str
    unit_price: str
    line_total: str


class _Money:
    """Formats amounts of one currency for one locale exactly as Babel does, ~10x faster.

    Babel's `format_currency` costs ~13 µs a call and a 3-item order needs 7. The locale's
    prefix, suffix and separators are learnt once from Babel and the result is checked against
    Babel on sample amounts; if any differs (an unusual pattern) every call goes to Babel.
    Amounts that would need rounding, negative or non-finite ones always go to Babel too.
    """

    __slots__ = (
        "_currency",
        "_fast",
        "_locale",
        "_prefix",
        "_quantum",
        "_spec",
        "_suffix",
        "_table",
    )

    def __init__(self, locale: Locale, currency: str) -> None:
        self._locale = locale
        self._currency = currency
        digits = get_currency_precision(currency)
        self._quantum = Decimal(1).scaleb(-digits)
        self._spec = f",.{digits}f"
        self._table = str.maketrans(
            {",": get_group_symbol(locale), ".": get_decimal_symbol(locale)}
        )
        self._prefix = self._suffix = ""
        self._fast = False
        probe = Decimal(1234567)
        core = format(probe, self._spec).translate(self._table)
        reference = format_currency(probe, currency, locale=locale)
        at = reference.find(core)
        if at < 0:
            return
        self._prefix, self._suffix = reference[:at], reference[at + len(core) :]
        self._fast = True
        samples = ("0", "1", "19.9", "39.8", "999.99", "1000", "1234.5", "999999999.99")
        self._fast = all(
            self(sample) == format_currency(sample, currency, locale=locale)
            for sample in (Decimal(text).quantize(self._quantum) for text in samples)
        )

    def __call__(self, amount: Decimal) -> str:
        if self._fast and amount.is_finite() and not amount.is_signed():
            try:
                exact = amount.quantize(self._quantum) == amount
            except InvalidOperation:  # more digits than the decimal context holds
                exact = False
            if exact:
                return (
                    self._prefix + format(amount, self._spec).translate(self._table) + self._suffix
                )
        return str(format_currency(amount, self._currency, locale=self._locale))


class _LocaleSpec:
    """Everything per locale that does not depend on the order: compiled once."""

    __slots__ = ("babel", "group_symbol", "html", "subject", "tag", "text", "zone")

    def __init__(self, tag: str, environment: jinja2.Environment) -> None:
        self.tag = tag
        self.babel = Locale.parse(tag, sep="-")
        self.group_symbol = str(get_group_symbol(self.babel))
        self.subject = _SUBJECTS[tag]
        self.zone = _DISPLAY_ZONES[tag]
        self.text = environment.get_template(f"confirmation.{tag}.txt")
        self.html = environment.get_template(f"confirmation.{tag}.html")


class Renderer:
    """Renders confirmation e-mails; build one per process and reuse it (it caches formatting)."""

    def __init__(self, from_address: str, message_id_domain: str) -> None:
        display_name, address = parseaddr(from_address)
        try:
            self._sender = _ascii_address(address)
        except PermanentError as exc:
            raise ValueError(f"from_address {from_address!r}: {exc.reason}") from None
        if not _DOMAIN_RE.fullmatch(message_id_domain):
            raise ValueError(f"message_id_domain {message_id_domain!r} is not an ASCII domain")
        self._from_line = _mailbox_header("From", display_name, self._sender)
        self._message_id_domain = message_id_domain
        environment = jinja2.Environment(
            loader=jinja2.PackageLoader("acme_notify", "templates"),
            autoescape=jinja2.select_autoescape(
                enabled_extensions=("html",), default_for_string=False, default=False
            ),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
            # Templates are compiled here and held below; nothing should re-check the files.
            auto_reload=False,
        )
        self._locales = {tag: _LocaleSpec(tag, environment) for tag in SUPPORTED_LOCALES}
        self._money: dict[tuple[str, str], _Money] = {}
        self._dates: dict[tuple[str, date], str] = {}

    def render(self, envelope: Envelope) -> RenderedMessage:
        """The whole message for one order event; raises PermanentError for an unusable address."""
        customer = envelope.payload.customer
        spec = self._locales.get(customer.locale) or self._locales[_resolve_locale(customer.locale)]
        recipient = _ascii_address(customer.email)
        context = self._context(envelope, spec)
        event_id = envelope.event_id
        message_id = f"<{_id_left(event_id)}@{self._message_id_domain}>"
        head = self._head(envelope, spec, recipient, message_id)
        data = _multipart(
            event_id,
            head,
            _quoted_printable(spec.text.render(context)),
            _quoted_printable(spec.html.render(context)),
        )
        return RenderedMessage(
            sender=self._sender, recipient=recipient, message_id=message_id, data=data
        )

    def _context(self, envelope: Envelope, spec: _LocaleSpec) -> dict[str, Any]:
        """What the templates fill in: every text escaped for the body, money formatted."""
        order = envelope.payload
        currency = _body_text(order.currency)
        money = self._money.get((spec.tag, currency))
        if money is None:
            if len(self._money) >= _MAX_MONEY_CACHE_ENTRIES:  # only odd producers get here
                self._money.clear()
            money = self._money[spec.tag, currency] = _Money(spec.babel, currency)
        group = spec.group_symbol
        return {
            "customer_name": _body_text(order.customer.name),
            "order_ref": order_reference(envelope.order_id),
            "order_id": _body_text(envelope.order_id),
            "order_date": self._order_date(spec, order.created_at),
            "items": [
                _Line(
                    _body_text(item.name),
                    f"{item.quantity:,}".replace(",", group),
                    money(Decimal(item.unit_price)),
                    money(Decimal(item.line_total)),
                )
                for item in order.items
            ],
            "total": money(Decimal(order.total)),
        }

    def _head(self, envelope: Envelope, spec: _LocaleSpec, recipient: str, message_id: str) -> str:
        """The message's header, up to the first part's own headers."""
        occurred_at = envelope.occurred_at
        if occurred_at.tzinfo is None:  # the contract says UTC; a naive value is read as such
            occurred_at = occurred_at.replace(tzinfo=UTC)
        ref = order_reference(envelope.order_id)
        return "".join(
            (
                self._from_line,
                _mailbox_header("To", envelope.payload.customer.name, recipient),
                _unstructured_header("Subject", spec.subject.format(ref=ref)),
                f"Date: {format_datetime(occurred_at)}\r\n",
                f"Message-ID: {message_id}\r\n",
                "MIME-Version: 1.0\r\n",
                # RFC 3834: tells auto-responders (vacation replies) not to answer.
                "Auto-Submitted: auto-generated\r\n",
                _unstructured_header("X-Acme-Order-Id", envelope.order_id),
                _unstructured_header("X-Acme-Event-Id", envelope.event_id),
            )
        )

    def _order_date(self, spec: _LocaleSpec, created_at: datetime) -> str:
        if created_at.tzinfo is None:
            created_at = created_at.replace(tzinfo=UTC)
        day = created_at.astimezone(spec.zone).date()
        # Orders of the same day share this string, and Babel takes ~4 µs to make it.
        key = (spec.tag, day)
        text = self._dates.get(key)
        if text is None:
            if len(self._dates) >= _MAX_DATE_CACHE_ENTRIES:
                self._dates.clear()
            text = self._dates[key] = str(format_date(day, "long", locale=spec.babel))
        return text


def order_reference(order_id: str) -> str:
    """The short reference a customer quotes: the last 8 hex digits of the order id, upper-cased.

    Not the first 8: in a UUIDv7 those are timestamp bits shared by all orders of the same minute.
    An id without 8 hex digits (not a UUID) gets 8 hex digits of its hash instead.
    """
    digits = "".join(ch for ch in order_id if ch in "0123456789abcdefABCDEF")
    if len(digits) < 8:
        digits = hashlib.blake2b(_utf8(order_id), digest_size=4).hexdigest()
    return digits[-8:].upper()


def _resolve_locale(tag: str) -> str:
    if tag in _SUBJECTS:
        return tag
    return _LOCALE_ALIASES.get(tag.strip().lower(), DEFAULT_LOCALE)


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate must not make hashing an id fail.
    return text.encode("utf-8", "surrogatepass")


def _replace_unsafe(text: str, unsafe: frozenset[str], keep: frozenset[str]) -> str:
    # isprintable() is C-fast and False for every Cc/Cf/Cs/Zl/Zp (and Zs but ASCII space), so
    # ordinary text skips the per-character walk.
    if text.isprintable():
        return text
    category = unicodedata.category
    return "".join(" " if category(ch) in unsafe and ch not in keep else ch for ch in text)


def _header_text(text: str) -> str:
    """Text safe for a header: controls and separators become spaces, whitespace is collapsed."""
    return " ".join(_replace_unsafe(text, _HEADER_UNSAFE, frozenset()).split())


def _body_text(text: str) -> str:
    """Text safe for a body line: no controls, line breaks or bidi overrides; joiners kept."""
    return _replace_unsafe(text, _BODY_UNSAFE, _BODY_KEEP)


def _encoded_words(run: str) -> list[str]:
    """RFC 2047 'B' encoded words for a run of text, each within the 75 characters allowed.

    A run too long for one word is split before a space, the space going into the next word
    (decoders drop the whitespace *between* adjacent encoded words, RFC 2047 section 6.2), and
    only a single word too long for one is split inside it, never inside a UTF-8 sequence.
    Splitting inside words shows up as stray spaces in Thunderbird and Apple Mail.
    """
    data = run.encode("utf-8")
    words = []
    start, size = 0, len(data)
    while start < size:
        end = start + _ENCODED_WORD_MAX_BYTES
        if end >= size:
            end = size
        else:
            space = data.rfind(b" ", start + 1, end + 1)
            if space > start:
                end = space
            else:
                while (data[end] & 0xC0) == 0x80:  # a UTF-8 continuation byte: back off
                    end -= 1
        encoded = binascii.b2a_base64(data[start:end], newline=False).decode("ascii")
        words.append(f"=?utf-8?b?{encoded}?=")
        start = end
    return words


def _header_tokens(text: str, plain: re.Pattern[str]) -> list[str]:
    """Text as header tokens: words `plain` accepts stay readable, runs of others are encoded.

    Consecutive words needing encoding share encoded words with the spaces between them, so
    that no two encoded words are adjacent unless a run is too long for one: decoders that get
    RFC 2047 section 6.2 wrong (CPython before gh-128110 was fixed) then still read it right.
    """
    tokens: list[str] = []
    run: list[str] = []
    for word in text.split(" "):
        if len(word) <= _MAX_PLAIN_WORD_CHARS and plain.fullmatch(word) and "=?" not in word:
            if run:
                tokens += _encoded_words(" ".join(run))
                run = []
            tokens.append(word)
        else:
            run.append(word)
    if run:
        tokens += _encoded_words(" ".join(run))
    return tokens


def _folded(name: str, tokens: list[str]) -> str:
    """`Name: tokens` CRLF, folded between tokens to keep lines within 78 characters."""
    lines = []
    line = f"{name}:"
    for token in tokens:
        if len(line) + 1 + len(token) > _MAX_HEADER_LINE_CHARS and len(line) > len(name) + 1:
            lines.append(line)
            line = ""
        line = f"{line} {token}"
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def _unstructured_header(name: str, value: str) -> str:
    """`Name: value` CRLF, cleaned, non-ASCII words RFC 2047 encoded, folded."""
    text = _header_text(value)
    if text.isascii() and "=?" not in text and len(name) + 2 + len(text) <= _MAX_HEADER_LINE_CHARS:
        return f"{name}: {text}\r\n"  # the usual case, at no cost
    return _folded(name, _header_tokens(text, _PLAIN_TEXT_WORD_RE))


def _mailbox_header(name: str, display_name: str, address: str) -> str:
    """`Name: display <address>` CRLF; the address must already be a checked ASCII addr-spec."""
    text = _header_text(display_name)[:_MAX_DISPLAY_NAME_CHARS].rstrip()
    # Words with specials (quotes, commas, angle brackets ...) are encoded rather than quoted:
    # one rule for everything, and an encoded word cannot be read as an address.
    return _folded(name, [*_header_tokens(text, _PLAIN_PHRASE_WORD_RE), f"<{address}>"])


def _ascii_address(address: str) -> str:
    """The address as a plain ASCII addr-spec (IDNA domain), or PermanentError."""
    local, at, domain = address.rpartition("@")
    if not at or len(local) > 64 or not _LOCAL_PART_RE.fullmatch(local):
        raise PermanentError(
            f"recipient {address!r} is not a plain ASCII address (SMTPUTF8 is not supported)",
            reason_class="invalid_recipient",
        )
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            domain = "\x00"  # fails the check below
    if not _DOMAIN_RE.fullmatch(domain) or len(local) + 1 + len(domain) > 254:
        raise PermanentError(
            f"recipient {address!r} has an invalid domain", reason_class="invalid_recipient"
        )
    return f"{local}@{domain}"


def _multipart(event_id: str, head: str, text: bytes, html: bytes) -> bytes:
    """head + a multipart/alternative body of the text and HTML parts (quoted-printable). The
    boundary comes from the event, so a resend is byte for byte the same message."""
    boundary = "=_acme_" + hashlib.blake2b(_utf8(event_id), digest_size=12).hexdigest()
    return b"".join(
        (
            head.encode("ascii"),
            f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n\r\n'
            f"--{boundary}\r\n"
            'Content-Type: text/plain; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode("ascii"),
            text,
            f"\r\n--{boundary}\r\n"
            'Content-Type: text/html; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n".encode("ascii"),
            html,
            f"\r\n--{boundary}--\r\n".encode("ascii"),
        )
    )


def _id_left(event_id: str) -> str:
    """The Message-ID left part: the event id itself when it is safe there, else its hash."""
    if _ID_LEFT_RE.fullmatch(event_id):
        return event_id
    return "h" + hashlib.blake2b(_utf8(event_id), digest_size=16).hexdigest()


def _quoted_printable(text: str) -> bytes:
    """A body as quoted-printable with CRLF line ends and lines of at most 76 characters."""
    # Jinja emits "\n" and the text holds no other line breaks (they were replaced above);
    # b2a_qp keeps the line ending it meets first, so CRLF goes in before encoding.
    if not text.endswith("\n"):
        text += "\n"
    return binascii.b2a_qp(text.replace("\n", "\r\n").encode("utf-8"), istext=True)
