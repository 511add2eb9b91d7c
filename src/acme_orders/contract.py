"""The HTTP contract of the order service, defined once: the order a client sends, the order it
gets back, and the problem it gets when something is wrong.

These msgspec Structs are both the validator and the document: `parse_order` decodes with them,
and `acme_orders.openapi` publishes their JSON Schema (msgspec's own, so the two cannot drift).
Every constraint the API enforces is here: lengths, patterns (no control characters in names,
money as a decimal string, SKUs, e-mail addresses), quantity bounds, the currency and locale
lists, no unknown fields. Decoding a good order is one msgspec call; only when it fails is the
document walked, field by field against the same types, so that a client is told about *every*
bad field in one answer (RFC 9457 problem details with an `errors` list).
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from decimal import Decimal
from functools import cache
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

from acme_orders.currencies import CURRENCIES
from acme_orders.domain import Customer, FieldError, LineItem, OrderDraft, money_precision

__all__ = [
    "CustomerIn",
    "ItemIn",
    "OrderIn",
    "OrderOut",
    "ProblemOut",
    "parse_order",
]

MAX_ITEMS: Final = 100
MAX_NAME_CHARS: Final = 200
MAX_SKU_CHARS: Final = 64
MAX_QUANTITY: Final = 10_000
MAX_EMAIL_CHARS: Final = 254
#: Up to 8 integer digits: 100 items of 10,000 at the highest price still fit the database's
#: numeric(18, 4), so no order total can overflow.
MAX_PRICE_DIGITS: Final = 8

#: Characters no name may hold: C0 and C1 controls, the Unicode format characters of the Basic
#: Multilingual Plane (soft hyphen, bidi overrides, zero-width ones, BOM ...), and the line and
#: paragraph separators. CR and LF are how header injection starts. (Lone surrogates cannot
#: arrive: a JSON body holding one is refused as malformed before any field is read.)
_FORBIDDEN: Final = (
    r"\x00-\x1f\x7f-\x9f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"
    r"\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb"
)
#: Text of a name: no forbidden character, and at least one that is not whitespace.
TEXT_PATTERN: Final = rf"^[^{_FORBIDDEN}]*[^{_FORBIDDEN}\s][^{_FORBIDDEN}]*$"
SKU_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
#: An ASCII addr-spec: a dot-atom local part, and a domain of LDH labels ending in a TLD of
#: letters (what every relay delivers to; SMTPUTF8 addresses are refused).
_ATOM: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL: Final = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
EMAIL_PATTERN: Final = rf"^{_ATOM}(?:\.{_ATOM})*@(?:{_LABEL}\.)+[A-Za-z]{{2,63}}$"
#: A price: a decimal string greater than zero, up to 8 integer digits and 2 decimals.
PRICE_PATTERN: Final = (
    rf"^(?:[1-9][0-9]{{0,{MAX_PRICE_DIGITS - 1}}}(?:\.[0-9]{{1,2}})?|0\.(?:[1-9][0-9]?|0[1-9]))$"
)
#: What the service answers with: a decimal string in the currency's precision.
AMOUNT_PATTERN: Final = r"^(?:0|[1-9][0-9]{0,13})(?:\.[0-9]{1,4})?$"

Name = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_NAME_CHARS,
        pattern=TEXT_PATTERN,
        description="Free text without control characters (CR, LF, tab, NUL ...); runs of "
        "whitespace are kept as one space.",
    ),
]
Email = Annotated[
    str,
    Meta(
        max_length=MAX_EMAIL_CHARS,
        pattern=EMAIL_PATTERN,
        description="An ASCII e-mail address (internationalised local parts are not accepted: "
        "many relays cannot deliver them).",
        examples=["ana@example.com"],
    ),
]
Locale = Annotated[
    Literal["pt-BR", "en-US", "pt", "en"],
    Meta(description="The language of the confirmation e-mail; `pt` and `en` are aliases."),
]
Currency = Annotated[
    Literal[CURRENCIES],  # type: ignore[valid-type]  # a tuple of str literals, built once
    Meta(
        description="ISO 4217 code of a currency with minor units (BRL, USD, EUR ...).",
        examples=["BRL"],
    ),
]
Sku = Annotated[
    str,
    Meta(min_length=1, max_length=MAX_SKU_CHARS, pattern=SKU_PATTERN, examples=["CANECA-01"]),
]
Quantity = Annotated[int, Meta(ge=1, le=MAX_QUANTITY)]
Price = Annotated[
    str,
    Meta(
        pattern=PRICE_PATTERN,
        description="A decimal string greater than zero, with up to 2 decimal places. Numbers "
        "are not accepted: money is never a binary float.",
        examples=["19.90"],
    ),
]
Amount = Annotated[
    str,
    Meta(
        pattern=AMOUNT_PATTERN,
        description="A decimal string, in the currency's precision.",
        examples=["39.80"],
    ),
]


class CustomerIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Name
    email: Email
    locale: Locale = "pt-BR"


class ItemIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    sku: Sku
    name: Name
    quantity: Quantity
    unit_price: Price


Items = Annotated[
    list[ItemIn], Meta(min_length=1, max_length=MAX_ITEMS, description="1 to 100 lines.")
]


class OrderIn(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An order as a client places it. Totals are computed by the server, never taken."""

    customer: CustomerIn
    items: Items
    currency: Currency


class CustomerOut(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    email: str
    locale: Literal["pt-BR", "en-US"]


class ItemOut(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    name: str
    quantity: int
    unit_price: Amount
    line_total: Amount


class NotificationOut(msgspec.Struct, frozen=True, kw_only=True):
    """The confirmation e-mail's state, as the order service last learnt it."""

    status: Literal["pending", "published", "sent", "dead"]
    updated_at: str | None
    attempts: int
    detail: str | None
    event_id: str | None
    stream_id: str | None


class TimelineEntryOut(msgspec.Struct, frozen=True, kw_only=True):
    at: str
    kind: str
    detail: dict[str, Any] | None


class OrderOut(msgspec.Struct, frozen=True, kw_only=True):
    """An order as the service answers it; `timeline` only on `GET /orders/{order_id}`."""

    id: str
    customer: CustomerOut
    currency: str
    items: list[ItemOut]
    total: Amount
    created_at: str
    trace_id: str | None
    notification: NotificationOut
    timeline: list[TimelineEntryOut] | msgspec.UnsetType = msgspec.UNSET


class FieldProblem(msgspec.Struct, frozen=True):
    """One invalid field: a JSON-pointer-like path, and what is wrong with it."""

    field: str
    message: str


class ProblemOut(msgspec.Struct, frozen=True, kw_only=True):
    """An RFC 9457 problem (`application/problem+json`)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    errors: list[FieldProblem] | msgspec.UnsetType = msgspec.UNSET


# --- validation ---------------------------------------------------------------------------

_FAST: Final = msgspec.json.Decoder(OrderIn)
_ENCODE: Final = msgspec.json.encode


def decode_order(raw: bytes) -> OrderDraft | list[FieldError]:
    """The order in a request body, or every field error in it; raises msgspec.DecodeError
    when the body is not JSON at all."""
    try:
        return _draft(_FAST.decode(raw))
    except msgspec.ValidationError:
        return _checked(msgspec.json.decode(raw))


def parse_order(document: Any) -> OrderDraft | list[FieldError]:
    """The order in an already decoded JSON document, or every field error in it."""
    try:
        return _draft(msgspec.convert(document, OrderIn, strict=True))
    except msgspec.ValidationError:
        return _checked(document)


def _checked(document: Any) -> OrderDraft | list[FieldError]:
    """The slow path: every error, or the order after the one leniency JSON Schema has that
    msgspec's strict decoding does not (an integral number such as `2.0` is an integer)."""
    errors: list[FieldError] = []
    normalized = _walk(document, OrderIn, "", errors)
    if errors:
        return errors
    return _draft(msgspec.convert(normalized, OrderIn, strict=True))


def _draft(order: OrderIn) -> OrderDraft:
    currency = order.currency
    quantum = Decimal(1).scaleb(-money_precision(currency))
    items = tuple(
        LineItem(
            sku=item.sku,
            name=_squeeze(item.name),
            quantity=item.quantity,
            unit_price=(price := Decimal(item.unit_price).quantize(quantum)),
            line_total=price * item.quantity,
        )
        for item in order.items
    )
    local, _at, domain = order.customer.email.rpartition("@")
    locale = order.customer.locale
    return OrderDraft(
        customer=Customer(
            name=_squeeze(order.customer.name),
            email=f"{local}@{domain.lower()}",
            locale="en-US" if locale.startswith("en") else "pt-BR",
        ),
        currency=currency,
        items=items,
        total=sum((item.line_total for item in items), Decimal(0)),
    )


def _squeeze(text: str) -> str:
    return " ".join(text.split())


def field_errors(document: Any) -> list[FieldError]:
    """Every field of `document` that OrderIn refuses, each with its path and a message."""
    errors: list[FieldError] = []
    _walk(document, OrderIn, "", errors)
    return errors


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


#: A compiled check of one type: (value, path, errors) -> the value, normalized.
_Check = Callable[[Any, str, list[FieldError]], Any]


def _walk(value: Any, kind: Any, path: str, errors: list[FieldError]) -> Any:
    """Checks `value` against `kind`, adding an error per bad field; returns the value with
    integral numbers in integer fields made integers."""
    return _check_of(kind)(value, path, errors)


@cache
def _check_of(kind: Any) -> _Check:
    """The check of `kind`, compiled once: what to look at for each field, its decoder and its
    message are worked out here, so a walk does no type inspection (annotations, hashing of
    the 242-currency enum) per body."""
    base = typing.get_args(kind)[0] if typing.get_origin(kind) is Annotated else kind
    if isinstance(base, type) and issubclass(base, msgspec.Struct):
        return _struct_check(base)
    if typing.get_origin(base) is list:
        return _list_check(kind, _check_of(typing.get_args(base)[0]))
    return _leaf_check(kind, integral=base is int)


def _struct_check(struct: type[msgspec.Struct]) -> _Check:
    hints = typing.get_type_hints(struct, include_extras=True)
    plan = {
        field.encode_name: (field.required, _check_of(hints[field.name]))
        for field in msgspec.structs.fields(struct)
    }

    def check(value: Any, path: str, errors: list[FieldError]) -> Any:
        if not isinstance(value, dict):
            errors.append(FieldError(path, "must be an object"))
            return value
        for key in sorted(set(value) - plan.keys(), key=str):
            errors.append(FieldError(_join(path, str(key)), "unknown field"))
        normalized = dict(value)
        for name, (required, field_check) in plan.items():
            at = _join(path, name)
            if name not in value:
                if required:
                    errors.append(FieldError(at, "is required"))
                continue
            normalized[name] = field_check(value[name], at, errors)
        return normalized

    return check


def _list_check(kind: Any, item_check: _Check) -> _Check:
    meta = next((m for m in typing.get_args(kind)[1:] if isinstance(m, Meta)), Meta())
    low, high = meta.min_length or 0, meta.max_length

    def check(value: Any, path: str, errors: list[FieldError]) -> Any:
        if not isinstance(value, list):
            errors.append(FieldError(path, "must be a non-empty list"))
            return value
        if len(value) < low or (high is not None and len(value) > high):
            errors.append(FieldError(path, f"must hold between {low} and {high} items"))
            return value
        return [item_check(item, f"{path}[{index}]", errors) for index, item in enumerate(value)]

    return check


def _leaf_check(kind: Any, *, integral: bool) -> _Check:
    # A prebuilt decoder: re-encoding one value is cheaper than msgspec.convert working the
    # annotated type out again on every call.
    decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(kind)
    message = _MESSAGES.get(kind, _generic)

    def check(value: Any, path: str, errors: list[FieldError]) -> Any:
        if integral and isinstance(value, float) and value.is_integer():
            value = int(value)  # JSON Schema's integer: 2.0 is 2
        try:
            decoder.decode(_ENCODE(value))
        except (msgspec.ValidationError, msgspec.EncodeError, TypeError):
            errors.append(FieldError(path, message(value)))
        return value

    return check


def _generic(_value: Any) -> str:
    return "is not valid here"


def _text_message(max_chars: int) -> Callable[[Any], str]:
    forbidden = re.compile(f"[{_FORBIDDEN}]")

    def message(value: Any) -> str:
        if not isinstance(value, str):
            return "must be a string"
        if forbidden.search(value):
            return "must not contain control characters (CR, LF, tab, NUL ...)"
        if not value.strip():
            return "must not be empty"
        if len(value) > max_chars:
            return f"must be at most {max_chars} characters"
        return "is not valid here"

    return message


def _sku_message(value: Any) -> str:
    if not isinstance(value, str):
        return "must be a string"
    if not value:
        return "must not be empty"
    if len(value) > MAX_SKU_CHARS:
        return f"must be at most {MAX_SKU_CHARS} characters"
    return "must start with a letter or digit and hold only letters, digits, '.', '_' and '-'"


def _email_message(value: Any) -> str:
    if not isinstance(value, str):
        return "must be a string"
    if len(value) > MAX_EMAIL_CHARS:
        return f"must be at most {MAX_EMAIL_CHARS} characters"
    return "is not a valid e-mail address (ASCII only, as name@domain.tld)"


def _quantity_message(value: Any) -> str:
    # bool is an int in Python; `true` is not a quantity.
    if not isinstance(value, int) or isinstance(value, bool):
        return "must be an integer"
    return f"must be between 1 and {MAX_QUANTITY}"


def _price_message(value: Any) -> str:
    if not isinstance(value, str):
        return 'must be a decimal string such as "19.90" (numbers are not accepted)'
    return (
        'must be a decimal string greater than zero, such as "19.90": up to '
        f"{MAX_PRICE_DIGITS} digits before the point and 2 after"
    )


def _locale_message(_value: Any) -> str:
    return "must be one of pt-BR, en-US (or pt, en)"


def _currency_message(_value: Any) -> str:
    return "must be an ISO 4217 currency code with minor units, such as BRL, USD or EUR"


_MESSAGES: Final[dict[Any, Callable[[Any], str]]] = {
    Name: _text_message(MAX_NAME_CHARS),
    Email: _email_message,
    Sku: _sku_message,
    Quantity: _quantity_message,
    Price: _price_message,
    Locale: _locale_message,
    Currency: _currency_message,
}
