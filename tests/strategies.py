"""Hypothesis strategies for the project's messages, shared by every property test."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from acme_orders.contract import MAX_NAME_CHARS
from acme_orders.domain import SUPPORTED_LOCALES

# Printable text without control characters: what a valid name may hold (any script, emoji).
safe_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn")),
    min_size=1,
    max_size=60,
).filter(lambda s: s.strip() != "")

names = safe_text.map(lambda s: s[:MAX_NAME_CHARS])
skus = st.from_regex(r"[A-Z0-9][A-Z0-9._-]{0,20}", fullmatch=True)
prices = st.builds(
    lambda units, cents: f"{units}.{cents:02d}",
    st.integers(min_value=0, max_value=99_999),
    st.integers(min_value=1, max_value=99),
)
emails = st.builds(
    lambda user, domain, tld: f"{user}@{domain}.{tld}",
    st.from_regex(r"[a-z][a-z0-9._+-]{0,20}[a-z0-9]", fullmatch=True).filter(
        lambda s: ".." not in s and not s.startswith(".") and ".-" not in s
    ),
    st.from_regex(r"[a-z][a-z0-9]{0,15}", fullmatch=True),
    st.sampled_from(["com", "com.br", "org", "net"]),
)

items = st.fixed_dictionaries(
    {
        "sku": skus,
        "name": names,
        "quantity": st.integers(min_value=1, max_value=50),
        "unit_price": prices,
    }
)

valid_orders: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {
        "customer": st.fixed_dictionaries(
            {
                "name": names,
                "email": emails,
                "locale": st.sampled_from(SUPPORTED_LOCALES),
            }
        ),
        "items": st.lists(items, min_size=1, max_size=5),
        "currency": st.sampled_from(["BRL", "USD", "EUR"]),
    }
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def _mutations(order: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """An order with one field replaced by an arbitrary JSON value."""
    paths = [
        ("customer", "name"),
        ("customer", "email"),
        ("customer", "locale"),
        ("currency",),
        ("items",),
    ]

    def mutate(path: tuple[str, ...], value: Any) -> dict[str, Any]:
        copy: dict[str, Any] = {**order, "customer": {**order["customer"]}}
        target = copy
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return copy

    return st.builds(mutate, st.sampled_from(paths), json_values)


#: Bodies that are mostly right with something wrong, and arbitrary JSON documents.
invalid_bodies = valid_orders.flatmap(_mutations) | json_values
