"""Orders, items, money and the validation rules of a new order. Pure: no I/O, no clocks.

Validation walks the decoded JSON by hand rather than letting a schema library stop at the first
error, so that a client is told about *every* bad field in one answer (RFC 9457 problem details
with an `errors` list). Money is `Decimal`, parsed from strings only, never from floats.
"""

from __future__ import annotations

import re
import unicodedata
from decimal import Decimal
from functools import cache
from typing import Any, Final

import msgspec
from babel.numbers import get_currency_precision, list_currencies
from email_validator import EmailNotValidError, validate_email

__all__ = [
    "SUPPORTED_LOCALES",
    "Customer",
    "FieldError",
    "LineItem",
    "OrderDraft",
    "parse_order",
]

#: Locales the confirmation e-mail is written in; the first is the default.
SUPPORTED_LOCALES: Final = ("pt-BR", "en-US")
_LOCALE_ALIASES: Final = {"pt": "pt-BR", "pt-br": "pt-BR", "en": "en-US", "en-us": "en-US"}

MAX_ITEMS: Final = 100
MAX_NAME_CHARS: Final = 200
MAX_SKU_CHARS: Final = 64
MAX_QUANTITY: Final = 10_000
MAX_EMAIL_CHARS: Final = 254
MAX_ORDER_TOTAL: Final = Decimal("1000000000")  # numeric(14, 2) keeps 12 integer digits
_SKU_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]*")
_PRICE_RE: Final = re.compile(r"(0|[1-9][0-9]{0,9})(\.[0-9]{1,4})?")


class FieldError(msgspec.Struct, frozen=True):
    """One invalid field: a JSON-pointer-like `field` path and what is wrong with it."""

    field: str
    message: str


class Customer(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    email: str
    locale: str


class LineItem(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    name: str
    quantity: int
    unit_price: Decimal
    line_total: Decimal


class OrderDraft(msgspec.Struct, frozen=True, kw_only=True):
    """A validated order, not yet stored: totals are computed here, never taken from clients."""

    customer: Customer
    currency: str
    items: tuple[LineItem, ...]
    total: Decimal


@cache
def _iso_currencies() -> frozenset[str]:
    # X-codes are funds, metals and test codes: not something a shop charges in.
    return frozenset(code for code in list_currencies() if not code.startswith("X"))


def _has_control_chars(text: str) -> bool:
    """True for CR, LF, NUL and every other control, line or paragraph separator."""
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in text)


class _Checker:
    """Collects every FieldError found while reading an untyped JSON document."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def fail(self, field: str, message: str) -> None:
        self.errors.append(FieldError(field, message))

    def obj(self, value: Any, field: str, allowed: frozenset[str]) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.fail(field, "must be an object")
            return None
        for key in sorted(set(value) - allowed):
            self.fail(f"{field}.{key}" if field else key, "unknown field")
        return value

    def text(self, value: Any, field: str, max_chars: int, *, required: bool = True) -> str | None:
        if value is None:
            if required:
                self.fail(field, "is required")
            return None
        if not isinstance(value, str):
            self.fail(field, "must be a string")
            return None
        if _has_control_chars(value):
            self.fail(field, "must not contain control characters (CR, LF, tab, NUL ...)")
            return None
        stripped = " ".join(value.split())
        if not stripped:
            self.fail(field, "must not be empty")
            return None
        if len(stripped) > max_chars:
            self.fail(field, f"must be at most {max_chars} characters")
            return None
        return stripped


def _email(check: _Checker, value: Any) -> str | None:
    address = check.text(value, "customer.email", MAX_EMAIL_CHARS)
    if address is None:
        return None
    try:
        # SMTPUTF8 local parts are refused: many relays cannot deliver them, and an order
        # accepted here must be deliverable by the notifier.
        valid = validate_email(address, check_deliverability=False, allow_smtputf8=False)
        return valid.ascii_email or valid.normalized
    except EmailNotValidError as exc:
        check.fail("customer.email", f"is not a valid e-mail address: {exc}")
        return None


def _locale(check: _Checker, value: Any) -> str | None:
    if value is None:
        return SUPPORTED_LOCALES[0]
    if not isinstance(value, str):
        check.fail("customer.locale", "must be a string")
        return None
    if value in SUPPORTED_LOCALES:
        return value
    alias = _LOCALE_ALIASES.get(value.lower())
    if alias is None:
        check.fail("customer.locale", f"must be one of {', '.join(SUPPORTED_LOCALES)}")
    return alias


def _currency(check: _Checker, value: Any) -> str | None:
    if not isinstance(value, str) or value not in _iso_currencies():
        check.fail("currency", "must be an ISO 4217 currency code such as BRL, USD or EUR")
        return None
    return value


def _quantity(check: _Checker, value: Any, field: str) -> int | None:
    # bool is an int subclass in Python; `true` is not a quantity.
    if not isinstance(value, int) or isinstance(value, bool):
        check.fail(field, "must be an integer")
        return None
    if not 1 <= value <= MAX_QUANTITY:
        check.fail(field, f"must be between 1 and {MAX_QUANTITY}")
        return None
    return value


def _price(check: _Checker, value: Any, field: str, currency: str | None) -> Decimal | None:
    if not isinstance(value, str):
        check.fail(field, 'must be a decimal string such as "19.90" (numbers are not accepted)')
        return None
    if not _PRICE_RE.fullmatch(value):
        check.fail(field, 'must be a non-negative decimal string such as "19.90"')
        return None
    price = Decimal(value)
    if price <= 0:
        check.fail(field, "must be greater than zero")
        return None
    if currency is not None:
        digits = get_currency_precision(currency)
        exponent = price.as_tuple().exponent
        if isinstance(exponent, int) and -exponent > digits:
            check.fail(field, f"has more than {digits} decimal places for {currency}")
            return None
        return price.quantize(Decimal(1).scaleb(-digits))
    return price


def _items(check: _Checker, value: Any, currency: str | None) -> list[LineItem]:
    if not isinstance(value, list):
        check.fail("items", "must be a non-empty list")
        return []
    if not 1 <= len(value) <= MAX_ITEMS:
        check.fail("items", f"must hold between 1 and {MAX_ITEMS} items")
        return []
    items: list[LineItem] = []
    allowed = frozenset({"sku", "name", "quantity", "unit_price"})
    for index, raw in enumerate(value):
        at = f"items[{index}]"
        item = check.obj(raw, at, allowed)
        if item is None:
            continue
        sku = check.text(item.get("sku"), f"{at}.sku", MAX_SKU_CHARS)
        if sku is not None and not _SKU_RE.fullmatch(sku):
            check.fail(f"{at}.sku", "may hold only letters, digits, '.', '_' and '-'")
            sku = None
        name = check.text(item.get("name"), f"{at}.name", MAX_NAME_CHARS)
        quantity = _quantity(check, item.get("quantity"), f"{at}.quantity")
        price = _price(check, item.get("unit_price"), f"{at}.unit_price", currency)
        if sku is None or name is None or quantity is None or price is None:
            continue
        items.append(
            LineItem(
                sku=sku, name=name, quantity=quantity, unit_price=price, line_total=price * quantity
            )
        )
    return items


def parse_order(document: Any) -> OrderDraft | list[FieldError]:
    """Validates a decoded JSON body; returns the draft, or every field error found."""
    check = _Checker()
    body = check.obj(document, "", frozenset({"customer", "items", "currency"}))
    if body is None:
        return check.errors
    customer_raw = check.obj(
        body.get("customer"), "customer", frozenset({"name", "email", "locale"})
    )
    name = email = locale = None
    if customer_raw is not None:
        name = check.text(customer_raw.get("name"), "customer.name", MAX_NAME_CHARS)
        email = _email(check, customer_raw.get("email"))
        locale = _locale(check, customer_raw.get("locale"))
    currency = _currency(check, body.get("currency"))
    items = _items(check, body.get("items"), currency)
    total = sum((item.line_total for item in items), Decimal(0))
    if total > MAX_ORDER_TOTAL:
        check.fail("items", f"order total must not exceed {MAX_ORDER_TOTAL}")
    if check.errors or name is None or email is None or locale is None or currency is None:
        return check.errors
    return OrderDraft(
        customer=Customer(name=name, email=email, locale=locale),
        currency=currency,
        items=tuple(items),
        total=total,
    )
