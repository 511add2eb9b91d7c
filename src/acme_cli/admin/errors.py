"""The ways an admin command ends badly, each tied to its `acme` exit code.

The codes are the ones `acme --help` documents (main.py owns 0-4; 5 is the admin commands'
"not found"). The flows raise these; `edge.checked` prints the message as one line and
returns the exit code.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["AdminError", "Failure", "NotFound", "Unavailable", "UsageError"]


class AdminError(Exception):
    """A command could not do what was asked; the message is for the operator, one line."""

    exit_code: ClassVar[int] = 1


class Failure(AdminError):
    """Done in part or refused (e.g. entries over the replay cap, confirmation declined)."""

    exit_code = 1


class UsageError(AdminError):
    """Malformed input: an id that is not a stream id, a duration that does not parse."""

    exit_code = 2


class Unavailable(AdminError):
    """Redis or PostgreSQL did not answer; the message names the (redacted) URL."""

    exit_code = 4


class NotFound(AdminError):
    """A well-formed id that names nothing: no such dead entry, no such order."""

    exit_code = 5
