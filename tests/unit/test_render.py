"""The confirmation e-mail renderer: locale wording and money, MIME structure, header safety."""

from __future__ import annotations

import binascii
import email.policy
import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import parsedate_to_datetime

import pytest
from babel.numbers import format_currency, get_currency_precision
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acme_notify.envelope import Customer, Envelope, Item, Order
from acme_notify.errors import PermanentError
from acme_notify.render import RenderedMessage, Renderer, order_reference
from acme_runtime.ids import uuid7

EVENT_ID = "0192f0c8-1111-7aaa-8bbb-0123456789ab"
ORDER_ID = "0192f0c8-2222-7ccc-8ddd-abcdef012345"
OCCURRED_AT = datetime(2025, 11, 29, 16, 51, 7, tzinfo=UTC)
BABEL_LOCALES = {"pt-BR": "pt_BR", "en-US": "en_US"}


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer("AcME Store <pedidos@acme.example>", "acme.example")


def _items(*names: str) -> tuple[Item, ...]:
    prices = (Decimal("19.90"), Decimal("5.00"), Decimal("1234.50"))
    quantities = (2, 1, 3)
    return tuple(
        Item(f"SKU-{n}", name, quantities[n % 3], prices[n % 3], prices[n % 3] * quantities[n % 3])
        for n, name in enumerate(names)
    )


def _envelope(
    *,
    name: str = "Maria Souza",
    email: str = "maria@example.com.br",
    locale: str = "pt-BR",
    items: tuple[Item, ...] | None = None,
    currency: str = "BRL",
    event_id: str = EVENT_ID,
    order_id: str = ORDER_ID,
) -> Envelope:
    lines = items if items is not None else _items("Camiseta AcME", "Caneca", "Adesivos")
    return Envelope(
        event_id=event_id,
        type="order.confirmation_requested",
        schema_version=1,
        occurred_at=OCCURRED_AT,
        order_id=order_id,
        payload=Order(
            customer=Customer(name=name, email=email, locale=locale),
            currency=currency,
            items=lines,
            total=sum((item.line_total for item in lines), Decimal(0)),
            created_at=OCCURRED_AT - timedelta(seconds=1),
        ),
    )


def _parse(message: RenderedMessage) -> EmailMessage:
    parsed = BytesParser(policy=email.policy.default).parsebytes(message.data)
    assert isinstance(parsed, EmailMessage)
    return parsed


def _bodies(parsed: EmailMessage) -> tuple[str, str]:
    parts = list(parsed.iter_parts())
    assert [part.get_content_type() for part in parts] == ["text/plain", "text/html"]
    text, html = (part.get_content() for part in parts)
    assert isinstance(text, str)
    assert isinstance(html, str)
    # The parser keeps the CRLF line ends of the wire; the raw bytes are checked elsewhere.
    return text.replace("\r\n", "\n"), html.replace("\r\n", "\n")


def _raw_header_lines(data: bytes) -> list[bytes]:
    head, separator, _ = data.partition(b"\r\n\r\n")
    assert separator, "no blank line ends the header section"
    return head.split(b"\r\n")


def _money(amount: str, locale: str, currency: str = "BRL") -> str:
    return str(format_currency(Decimal(amount), currency, locale=BABEL_LOCALES[locale]))


@pytest.mark.parametrize(
    ("locale", "subject", "greeting"),
    [
        ("pt-BR", "Pedido EF012345 confirmado", "Olá, Maria Souza!"),
        ("en-US", "Order EF012345 confirmed", "Hi Maria Souza,"),
    ],
)
def test_each_locale_renders_a_complete_message(
    renderer: Renderer, locale: str, subject: str, greeting: str
) -> None:
    """Both locales give the expected headers, two alternative parts and the whole order."""
    message = renderer.render(_envelope(locale=locale))
    parsed = _parse(message)

    assert parsed["From"] == "AcME Store <pedidos@acme.example>"
    assert parsed["To"].addresses[0].display_name == "Maria Souza"
    assert parsed["To"].addresses[0].addr_spec == "maria@example.com.br"
    assert parsed["Subject"] == subject
    assert parsedate_to_datetime(parsed["Date"]) == OCCURRED_AT
    assert parsed["Message-ID"] == f"<{EVENT_ID}@acme.example>" == message.message_id
    assert parsed["X-Acme-Order-Id"] == ORDER_ID
    assert parsed["X-Acme-Event-Id"] == EVENT_ID
    assert parsed["MIME-Version"] == "1.0"
    assert parsed.get_content_type() == "multipart/alternative"
    assert (message.sender, message.recipient) == ("pedidos@acme.example", "maria@example.com.br")
    assert not parsed.defects

    text, html = _bodies(parsed)
    for body in (text, html):
        assert greeting in body
        for name in ("Camiseta AcME", "Caneca", "Adesivos"):
            assert name in body
        for amount in ("19.90", "39.80", "5.00", "1234.50", "3703.50", "3748.30"):
            assert _money(amount, locale) in body
        assert "EF012345" in body
        assert ORDER_ID in body
    assert "2 \u00d7 " in text
    assert "3 \u00d7 " in text
    assert ">2</td>" in html
    assert ">3</td>" in html


def test_money_is_written_the_way_each_locale_writes_it(renderer: Renderer) -> None:
    """pt-BR writes R$ 39,80 (no-break space, decimal comma); en-US writes R$39.80."""
    pt_text, pt_html = _bodies(_parse(renderer.render(_envelope(locale="pt-BR"))))
    en_text, _ = _bodies(_parse(renderer.render(_envelope(locale="en-US"))))
    assert "R$\xa039,80" in pt_text
    assert "R$\xa039,80" in pt_html
    assert "Total: R$\xa03.748,30" in pt_text
    assert "R$39.80" in en_text
    assert "Total: R$3,748.30" in en_text


@given(
    currency=st.sampled_from(["BRL", "USD", "EUR", "JPY", "BHD", "CHF", "GBP", "CLP", "KWD"]),
    cents=st.integers(min_value=0, max_value=10**12),
    locale=st.sampled_from(["pt-BR", "en-US"]),
)
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_amount_matches_babel(
    renderer: Renderer, currency: str, cents: int, locale: str
) -> None:
    """The cached money formatter writes exactly what babel's format_currency writes."""
    amount = Decimal(cents).scaleb(-get_currency_precision(currency))
    items = (Item("S", "x", 1, amount, amount),)
    text, _ = _bodies(
        _parse(renderer.render(_envelope(locale=locale, items=items, currency=currency)))
    )
    babel_locale = BABEL_LOCALES[locale]
    assert f"Total: {format_currency(amount, currency, locale=babel_locale)}\n" in text


def test_unknown_locale_falls_back_to_portuguese(renderer: Renderer) -> None:
    """A locale the e-mail is not written in gets the pt-BR text; 'en' alone gets English."""
    assert _parse(renderer.render(_envelope(locale="fr-FR")))["Subject"].startswith("Pedido ")
    assert _parse(renderer.render(_envelope(locale="en")))["Subject"].startswith("Order ")


def test_non_ascii_name_is_rfc2047_encoded_and_decodes_back(renderer: Renderer) -> None:
    """José Ação 😀 travels as an encoded word in ASCII-only headers and reads back intact."""
    message = renderer.render(_envelope(name="José Ação 😀"))
    lines = _raw_header_lines(message.data)
    assert all(line.isascii() for line in lines)
    to_line = next(line for line in lines if line.startswith(b"To: "))
    assert b"=?utf-8?b?" in to_line
    address = _parse(message)["To"].addresses[0]
    assert (address.display_name, address.addr_spec) == ("José Ação 😀", "maria@example.com.br")


def test_long_non_ascii_name_splits_encoded_words_only_at_spaces(renderer: Renderer) -> None:
    """A long accented name is cut into encoded words at spaces and decodes back exactly."""
    name = "Conceição Gonçalves Araújo Brandão Simões Peçanha Assunção Conceição"
    lines = _raw_header_lines(renderer.render(_envelope(name=name)).data)
    start = next(n for n, line in enumerate(lines) if line.startswith(b"To: "))
    folded = [lines[start], *itertools.takewhile(lambda line: line[:1] == b" ", lines[start + 1 :])]
    phrase, _, address = b"".join(folded)[len(b"To: ") :].decode("ascii").rpartition(" <")
    assert address == "maria@example.com.br>"
    words = decode_header(phrase)
    assert len(words) == 1
    assert words[0][1] == "utf-8"
    # The standard parser of Python < 3.14 adds spaces between adjacent encoded words in a
    # display name (CPython gh-128110), so the RFC 2047 reading is checked with decode_header.
    assert str(make_header(words)) == name
    pieces = [
        binascii.a2b_base64(word.split("?")[3]).decode("utf-8")
        for word in phrase.replace("\r\n", "").split()
    ]
    assert len(pieces) > 1
    assert all(piece.startswith(" ") for piece in pieces[1:])


def test_only_words_that_need_it_are_encoded(renderer: Renderer) -> None:
    """In José da Silva only José is encoded; plain words stay readable in the raw header."""
    message = renderer.render(_envelope(name="José da Silva"))
    to_line = next(line for line in _raw_header_lines(message.data) if line.startswith(b"To: "))
    assert to_line.endswith(b"?= da Silva <maria@example.com.br>")
    assert _parse(message)["To"].addresses[0].display_name == "José da Silva"


def test_name_with_specials_stays_one_mailbox(renderer: Renderer) -> None:
    """A name with commas and quotes stays one mailbox with the same display name."""
    name = 'O\'Brien, "Pat" <pat@evil.example>'
    parsed = _parse(renderer.render(_envelope(name=name)))
    (address,) = parsed["To"].addresses
    assert (address.display_name, address.addr_spec) == (name, "maria@example.com.br")


@pytest.mark.parametrize("field", ["name", "order_id", "event_id"])
def test_crlf_in_any_header_value_injects_nothing(renderer: Renderer, field: str) -> None:
    """CR LF plus a Bcc line in a name or id adds no header, and the header stays pure ASCII."""
    evil = "Ana\r\nBcc: evil@example.com\nX-Evil: 1\r\n\r\nbody"
    envelope = {
        "name": _envelope(name=evil),
        "order_id": _envelope(order_id=evil),
        "event_id": _envelope(event_id=evil),
    }[field]
    message = renderer.render(envelope)
    parsed = _parse(message)
    assert parsed["Bcc"] is None
    assert parsed["X-Evil"] is None
    assert len(parsed.get_all("To") or []) == 1
    assert parsed["To"].addresses[0].addr_spec == "maria@example.com.br"
    lines = _raw_header_lines(message.data)
    assert all(line.isascii() for line in lines)
    assert not any(line.lower().startswith((b"bcc", b"x-evil")) for line in lines)
    assert b"\n" not in message.data.replace(b"\r\n", b"")
    assert b"\r" not in message.data.replace(b"\r\n", b"")
    assert not parsed.defects


def test_html_part_escapes_item_names(renderer: Renderer) -> None:
    """An item named <script>alert(1)</script> is escaped in HTML and verbatim in the text part."""
    items = _items("<script>alert(1)</script>", "Tom & Jerry")
    text, html = _bodies(_parse(renderer.render(_envelope(items=items))))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<script>" not in html
    assert "Tom &amp; Jerry" in html
    assert "<script>alert(1)</script>" in text
    assert "Tom & Jerry" in text


def test_same_event_gives_the_same_bytes(renderer: Renderer) -> None:
    """A resend of one event has the same Message-ID and bytes; another event gets another id."""
    first, again = renderer.render(_envelope()), renderer.render(_envelope())
    other = renderer.render(_envelope(event_id=str(uuid7())))
    assert first.message_id == again.message_id == f"<{EVENT_ID}@acme.example>"
    assert first.data == again.data
    assert other.message_id != first.message_id


def test_odd_event_id_still_gives_a_valid_message_id(renderer: Renderer) -> None:
    """An event id that is not an atom is hashed into a well-formed, stable Message-ID."""
    first = renderer.render(_envelope(event_id="a b@c>"))
    assert first.message_id == renderer.render(_envelope(event_id="a b@c>")).message_id
    assert first.message_id.startswith("<h")
    assert first.message_id.endswith("@acme.example>")
    assert _parse(first)["Message-ID"] == first.message_id


def test_every_line_ends_with_crlf_and_respects_length_limits(renderer: Renderer) -> None:
    """All lines end in CRLF within 998 bytes; header and quoted-printable lines within 78/76."""
    long_name = "Ana " * 80
    items = _items("Caneca " * 40, "." * 300, "Tênis")
    message = renderer.render(_envelope(name=long_name, items=items))
    assert message.data.endswith(b"\r\n")
    lines = message.data.split(b"\r\n")[:-1]
    assert all(b"\n" not in line and b"\r" not in line for line in lines)
    assert all(len(line) <= 998 for line in lines)
    header_lines = _raw_header_lines(message.data)
    assert all(len(line) <= 78 for line in header_lines)
    assert all(len(line) <= 76 for line in lines[len(header_lines) :])
    parsed = _parse(message)
    assert parsed["To"].addresses[0].display_name == " ".join(long_name.split())[:200].rstrip()
    _, html = _bodies(parsed)
    assert "." * 300 in html


def test_lines_starting_with_a_dot_survive(renderer: Renderer) -> None:
    """Quoted-printable lines that start with '.' still decode to the original text."""
    message = renderer.render(_envelope(items=_items("." * 500)))
    assert any(line.startswith(b".") for line in message.data.split(b"\r\n"))
    assert b"\r\n.\r\n" not in message.data
    text, html = _bodies(_parse(message))
    assert "." * 500 in text
    assert "." * 500 in html


def test_body_is_quoted_printable_utf8(renderer: Renderer) -> None:
    """Each part declares utf-8 quoted-printable and its raw payload decodes as such."""
    parsed = _parse(renderer.render(_envelope(name="Zoë")))
    for part in parsed.iter_parts():
        assert part["Content-Transfer-Encoding"] == "quoted-printable"
        assert part.get_content_charset() == "utf-8"
        raw = part.get_payload(decode=False)
        assert isinstance(raw, str)
        assert raw.isascii()
        assert "Zoë" in binascii.a2b_qp(raw.encode("ascii")).decode("utf-8")


def test_reference_is_the_random_tail_of_the_order_id() -> None:
    """The subject reference is the last 8 hex digits, so orders of the same minute differ."""
    assert order_reference(ORDER_ID) == "EF012345"
    same_minute = {order_reference(str(uuid7(now_ms=1_700_000_000_000))) for _ in range(50)}
    assert len(same_minute) == 50
    assert len(order_reference("o")) == 8
    assert order_reference("o") == order_reference("o")


def test_international_domain_is_sent_as_punycode(renderer: Renderer) -> None:
    """A Unicode domain becomes its IDNA ASCII form in RCPT TO and in the To header."""
    message = renderer.render(_envelope(email="ana@straße.de"))
    assert message.recipient == "ana@xn--strae-oqa.de"
    assert _parse(message)["To"].addresses[0].addr_spec == "ana@xn--strae-oqa.de"


@pytest.mark.parametrize(
    "address",
    ["josé@example.com", "a@b.com>, evil@example.com", "a@b.com\r\nBcc: x@y.z", "no-at-sign", "a@"],
)
def test_unusable_recipient_is_a_permanent_error(renderer: Renderer, address: str) -> None:
    """An address that is not a plain ASCII addr-spec is refused as invalid_recipient."""
    with pytest.raises(PermanentError) as caught:
        renderer.render(_envelope(email=address))
    assert caught.value.reason_class == "invalid_recipient"


def test_bad_configuration_is_refused_at_construction() -> None:
    """A malformed From address or Message-ID domain fails when the renderer is built."""
    with pytest.raises(ValueError, match="from_address"):
        Renderer("AcME <not an address>", "acme.example")
    with pytest.raises(ValueError, match="message_id_domain"):
        Renderer("AcME <a@acme.example>", "acme example>")


@given(
    name=st.text(max_size=300),
    item_names=st.lists(st.text(max_size=120), min_size=1, max_size=4),
    locale=st.sampled_from(["pt-BR", "en-US", ""]),
)
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_text_in_names_yields_one_well_formed_recipient(
    renderer: Renderer, name: str, item_names: list[str], locale: str
) -> None:
    """Whatever unicode the names hold, the bytes parse with exactly one To: the recipient."""
    message = renderer.render(_envelope(name=name, items=_items(*item_names), locale=locale))
    lines = _raw_header_lines(message.data)
    assert all(line.isascii() and len(line) <= 78 for line in lines)
    assert b"\n" not in message.data.replace(b"\r\n", b"")
    parsed = _parse(message)
    to_headers = parsed.get_all("To") or []
    assert len(to_headers) == 1
    (address,) = to_headers[0].addresses
    assert address.addr_spec == message.recipient == "maria@example.com.br"
    text, html = _bodies(parsed)
    assert "Total: " in text
    assert "Total" in html
