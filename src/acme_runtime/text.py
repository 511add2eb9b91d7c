"""Text from outside: what a client library hands over as bytes, and what a server says.

`as_text` is the one place that turns a Redis reply (bytes, or str from a decoding client,
or a number) into `str`: strict UTF-8 by default, since ids and names we wrote ourselves are
ASCII; `errors="replace"` where the text may be someone else's.

A server may answer anything: NUL bytes, bytes that are not UTF-8 (aiosmtplib hands them over
as lone surrogates), several lines, kilobytes. PostgreSQL's `text` refuses NUL and surrogates,
and a log line should stay one line. `printable` is the one place that turns such text into
something every store accepts, keeping what a human needs to read it.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["as_text", "printable"]

#: C0 and C1 controls, DEL, and the Unicode line/paragraph separators.
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")
_LINE_BREAK: Final = re.compile(r"\s*(?:\r\n|\r|\n)\s*")


def as_text(value: object, errors: str = "strict") -> str:
    """`value` as text: bytes decoded as UTF-8 (`errors` as in `bytes.decode`), anything else
    as `str(value)`."""
    return value.decode("utf-8", errors) if isinstance(value, bytes) else str(value)


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}" if ord(match.group()) < 0x100 else " "


def printable(text: str, max_chars: int) -> str:
    """`text` on one line, without controls or invalid characters, at most `max_chars` long.

    Bytes that were not UTF-8 (surrogate escapes) and controls are written as `\\xNN`, line
    breaks as ` | `, and an over-long text is cut with a trailing `…`.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    if not text.isascii() or not text.isprintable():
        # Lone surrogates are the undecodable bytes a lenient decoder kept: show them as bytes.
        try:
            raw = text.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate no decoder made: keep its bytes visible too
            raw = text.encode("utf-8", "surrogatepass")
        text = raw.decode("utf-8", "backslashreplace")
        text = _LINE_BREAK.sub(" | ", text.strip())
        text = _CONTROL.sub(_escape, text)
        # Tabs and any whitespace left become plain spaces.
        text = re.sub(r"[\t\x0b\x0c]", " ", text)
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return text
