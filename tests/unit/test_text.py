"""Text from outside made safe to store: one line, no NUL, no undecodable bytes, bounded."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acme_runtime.text import printable


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        ("250 2.0.0 Ok: queued as 4Xk9", "250 2.0.0 Ok: queued as 4Xk9"),
        ("250 ok\x00id=1", "250 ok\\x00id=1"),
        ("250 queued caf\udce9", "250 queued caf\\xe9"),
        ("250-first\r\n250-second\n250 third", "250-first | 250-second | 250 third"),
        ("250 ok\x1b[31m red", "250 ok\\x1b[31m red"),
        ("250 tab\there", "250 tab here"),
        ("250 lone \ud800 surrogate", "250 lone \\xed\\xa0\\x80 surrogate"),
        ("250 Zoë 😀", "250 Zoë 😀"),
    ],
)
def test_odd_replies_become_one_readable_line(raw: str, kept: str) -> None:
    """Controls and undecodable bytes are shown as \\xNN, line breaks as ` | `."""
    assert printable(raw, 500) == kept


def test_long_text_is_cut_with_an_ellipsis() -> None:
    """A 900-character reply keeps its start and says it was cut."""
    kept = printable("250 " + "x" * 896, 500)
    assert len(kept) == 500
    assert kept.endswith("…")


@given(st.text(alphabet=st.characters(codec=None)), st.integers(1, 600))
def test_whatever_a_server_says_fits_postgresql_text(raw: str, limit: int) -> None:
    """No NUL, no surrogate, no line break, never longer than the limit: PostgreSQL takes it."""
    kept = printable(raw, limit)
    assert len(kept) <= limit
    assert "\x00" not in kept
    assert "\n" not in kept
    assert "\r" not in kept
    kept.encode("utf-8")  # raises on a surrogate
