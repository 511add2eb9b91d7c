"""The order contract's rules: every bad field named, money exact, hostile strings refused."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given

from acme_orders.contract import MAX_ITEMS, MAX_PRICE_DIGITS, MAX_QUANTITY, parse_order
from acme_orders.currencies import CURRENCIES
from acme_orders.domain import FieldError, OrderDraft
from tests.strategies import valid_orders


def sample(**overrides: Any) -> dict[str, Any]:
    order: dict[str, Any] = {
        "customer": {"name": "Ana Souza", "email": "ana@example.com", "locale": "pt-BR"},
        "items": [{"sku": "CANECA-01", "name": "Caneca", "quantity": 2, "unit_price": "19.90"}],
        "currency": "BRL",
    }
    order.update(overrides)
    return order


def errors_of(document: Any) -> dict[str, str]:
    result = parse_order(document)
    assert isinstance(result, list), f"expected errors, got {result!r}"
    return {e.field: e.message for e in result}


def test_valid_order_computes_line_totals_and_total_in_decimal() -> None:
    """The server computes totals exactly, from decimal strings."""
    draft = parse_order(
        sample(
            items=[
                {"sku": "A", "name": "a", "quantity": 3, "unit_price": "0.10"},
                {"sku": "B", "name": "b", "quantity": 1, "unit_price": "19.90"},
            ]
        )
    )
    assert isinstance(draft, OrderDraft)
    assert [i.line_total for i in draft.items] == [Decimal("0.30"), Decimal("19.90")]
    assert draft.total == Decimal("20.20")


def test_every_bad_field_is_reported_at_once() -> None:
    """One answer lists every invalid field, not just the first."""
    errors = errors_of(
        {
            "customer": {"name": "", "email": "not-an-email", "locale": "fr-FR"},
            "items": [{"sku": "A", "name": "a", "quantity": 0, "unit_price": 19.9}],
            "currency": "REAIS",
        }
    )
    assert set(errors) == {
        "customer.name",
        "customer.email",
        "customer.locale",
        "currency",
        "items[0].quantity",
        "items[0].unit_price",
    }
    assert "numbers are not accepted" in errors["items[0].unit_price"]


@pytest.mark.parametrize(
    "name",
    [
        "Ana\r\nBcc: victim@example.com",
        "Ana\nSouza",
        "Ana\x00",
        "Ana\u2028Souza",
        "Ana\tSouza",
    ],
)
def test_control_characters_in_names_are_refused(name: str) -> None:
    """CR/LF and other controls never get into an order, hence never into an e-mail header."""
    errors = errors_of(sample(customer={"name": name, "email": "a@example.com"}))
    assert "control characters" in errors["customer.name"]


def test_header_injection_through_the_email_field_is_refused() -> None:
    """An address carrying an extra header is not an address."""
    errors = errors_of(
        sample(customer={"name": "Ana", "email": "ana@example.com\r\nBcc: x@evil.test"})
    )
    assert "customer.email" in errors


def test_unknown_fields_are_named() -> None:
    """Typos are caught rather than silently dropped."""
    errors = errors_of(sample(coupon="X"))
    assert errors == {"coupon": "unknown field"}


def test_empty_and_oversized_item_lists_are_refused() -> None:
    """An order has between 1 and 100 items."""
    assert "items" in errors_of(sample(items=[]))
    many = [{"sku": "A", "name": "a", "quantity": 1, "unit_price": "1.00"}] * 101
    assert "items" in errors_of(sample(items=many))


def test_prices_carry_at_most_two_decimals_and_currencies_have_minor_units() -> None:
    """A price has at most 2 decimal places, and every currency accepted carries them: yen,
    which has no cents, is not a currency an order may be in."""
    assert "currency" in errors_of(
        sample(
            currency="JPY", items=[{"sku": "A", "name": "a", "quantity": 1, "unit_price": "150"}]
        )
    )
    assert "items[0].unit_price" in errors_of(
        sample(items=[{"sku": "A", "name": "a", "quantity": 1, "unit_price": "1.999"}])
    )


def test_three_decimal_currencies_keep_their_precision() -> None:
    """A price in Kuwaiti dinars is stored with the dinar's three decimal places."""
    draft = parse_order(
        sample(
            currency="KWD", items=[{"sku": "A", "name": "a", "quantity": 3, "unit_price": "1.25"}]
        )
    )
    assert isinstance(draft, OrderDraft)
    assert str(draft.items[0].unit_price) == "1.250" and str(draft.total) == "3.750"


def test_the_currency_list_is_babels_currencies_with_minor_units() -> None:
    """The static list the contract publishes is exactly what Babel, which the notifier
    formats amounts with, says has two or more minor-unit digits (X-codes left out)."""
    from babel.numbers import get_currency_precision, list_currencies

    expected = sorted(
        code
        for code in list_currencies()
        if not code.startswith("X") and get_currency_precision(code) >= 2
    )
    assert list(CURRENCIES) == expected


def test_the_largest_order_fits_the_database() -> None:
    """100 lines of 10,000 at the highest price stay below numeric(18, 4)'s 10**14."""
    price = Decimal("9" * MAX_PRICE_DIGITS + ".99")
    assert price * MAX_QUANTITY * MAX_ITEMS < Decimal(10) ** 14


def test_a_body_with_many_bad_fields_gets_every_one_named() -> None:
    """Two customers' worth of mistakes and three bad lines: each field is named once."""
    errors = errors_of(
        {
            "customer": {"name": "A\nB", "email": "a@b", "locale": 7, "vip": True},
            "items": [
                {"sku": "-x", "name": "ok", "quantity": 10_001, "unit_price": "0"},
                {"sku": "B", "name": " ", "quantity": "2", "unit_price": "1.5", "tax": 1},
                "not an item",
            ],
            "currency": None,
            "coupon": "X",
        }
    )
    assert errors == {
        "coupon": "unknown field",
        "currency": "must be an ISO 4217 currency code with minor units, such as BRL, USD or EUR",
        "customer.vip": "unknown field",
        "customer.name": "must not contain control characters (CR, LF, tab, NUL ...)",
        "customer.email": "is not a valid e-mail address (ASCII only, as name@domain.tld)",
        "customer.locale": "must be one of pt-BR, en-US (or pt, en)",
        "items[0].sku": "must start with a letter or digit and hold only letters, digits, "
        "'.', '_' and '-'",
        "items[0].quantity": "must be between 1 and 10000",
        "items[0].unit_price": 'must be a decimal string greater than zero, such as "19.90": '
        "up to 8 digits before the point and 2 after",
        "items[1].tax": "unknown field",
        "items[1].name": "must not be empty",
        "items[1].quantity": "must be an integer",
        "items[2]": "must be an object",
    }


def test_locale_defaults_to_portuguese_and_accepts_aliases() -> None:
    """No locale means pt-BR; 'en' means en-US."""
    draft = parse_order(sample(customer={"name": "Ana", "email": "a@example.com"}))
    assert isinstance(draft, OrderDraft) and draft.customer.locale == "pt-BR"
    draft = parse_order(sample(customer={"name": "Ann", "email": "a@example.com", "locale": "en"}))
    assert isinstance(draft, OrderDraft) and draft.customer.locale == "en-US"


def test_booleans_are_not_quantities() -> None:
    """JSON true is not the integer 1."""
    errors = errors_of(
        sample(items=[{"sku": "A", "name": "a", "quantity": True, "unit_price": "1.00"}])
    )
    assert "items[0].quantity" in errors


def test_non_object_bodies_are_refused() -> None:
    """A list or a string is not an order."""
    assert parse_order([1, 2]) == [FieldError("", "must be an object")]


@given(valid_orders)
def test_generated_valid_orders_are_accepted(document: dict[str, Any]) -> None:
    """Anything the strategy calls valid, the validator accepts, with a positive total."""
    draft = parse_order(document)
    assert isinstance(draft, OrderDraft), draft
    assert draft.total > 0
