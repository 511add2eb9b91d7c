"""Orders, items and money: what a validated order is. Pure: no I/O, no clocks.

The rules a new order must follow, and how a request body is checked against them, are the
HTTP contract's (`acme_orders.contract`). Money is `Decimal`, parsed from strings only, never
from floats.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Final

import msgspec
from babel.numbers import get_currency_precision

__all__ = [
    "SUPPORTED_LOCALES",
    "Customer",
    "FieldError",
    "LineItem",
    "OrderDraft",
    "money_precision",
]

#: Locales the confirmation e-mail is written in; the first is the default.
SUPPORTED_LOCALES: Final = ("pt-BR", "en-US")


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


def money_precision(currency: str) -> int:
    """How many decimal places amounts in `currency` carry (ISO 4217 minor units)."""
    return int(get_currency_precision(currency))
