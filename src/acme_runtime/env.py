"""Reading settings from the environment: typed, once, with one clear line per mistake.

Each service's `Settings.from_env()` uses these readers; nothing here is called at import time.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import msgspec

__all__ = [
    "EnvReader",
    "SettingsError",
    "default_consumer_name",
    "default_helo_name",
    "redact_url",
    "struct_defaults",
]


#: RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
_HOSTNAME: Final = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_ADDRESS_LITERAL: Final = re.compile(r"\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9A-Fa-f:.]+)\]")


class SettingsError(ValueError):
    """A configuration variable is missing or malformed; the message names the variable."""


class EnvReader:
    """Typed access to a mapping of environment variables (os.environ by default)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._env = os.environ if environ is None else environ

    def raw(self, name: str) -> str | None:
        value = self._env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def hostname(self, name: str, default: Callable[[], str]) -> str:
        """A host name as given in SMTP's EHLO: a domain name, or an address literal such as
        `[192.0.2.1]`; `default()` is called only when the variable is not set."""
        value = self.raw(name)
        if value is None:
            return default()
        if not _HOSTNAME.fullmatch(value) and not _ADDRESS_LITERAL.fullmatch(value):
            raise SettingsError(
                f"{name}: expected a host name such as mail.example.com or an address literal "
                f"such as [192.0.2.1], got {value!r}"
            )
        return value

    def string(self, name: str, default: str) -> str:
        value = self.raw(name)
        return default if value is None else value

    def optional_url(self, name: str, schemes: tuple[str, ...]) -> str | None:
        value = self.raw(name)
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in schemes:
            allowed = ", ".join(f"{s}://" for s in schemes)
            raise SettingsError(
                f"{name}: expected a URL starting with {allowed}, got {redact_url(value)!r}"
            )
        try:
            port = parts.port
        except ValueError as exc:
            raise SettingsError(f"{name}: bad port in {redact_url(value)!r}: {exc}") from None
        if not parts.hostname and parts.scheme not in ("unix", "redis+unix"):
            raise SettingsError(f"{name}: no host in {redact_url(value)!r}")
        del port
        return value

    def integer(
        self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        value = self.raw(name)
        if value is None:
            return default
        try:
            parsed = int(value)
        except ValueError:
            raise SettingsError(f"{name}: expected an integer, got {value!r}") from None
        if parsed < minimum or (maximum is not None and parsed > maximum):
            upper = "" if maximum is None else f" and at most {maximum}"
            raise SettingsError(f"{name}: must be at least {minimum}{upper}, got {parsed}")
        return parsed

    def number(self, name: str, default: float, *, minimum: float = 0.0) -> float:
        value = self.raw(name)
        if value is None:
            return default
        try:
            parsed = float(value)
        except ValueError:
            raise SettingsError(f"{name}: expected a number, got {value!r}") from None
        if parsed < minimum or parsed != parsed:  # NaN compares unequal to itself
            raise SettingsError(f"{name}: must be a number of at least {minimum}, got {value!r}")
        return parsed

    def boolean(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{name}: expected true/false, got {value!r}")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.string(name, default)
        normalised = value.lower()
        if normalised not in choices:
            raise SettingsError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
        return normalised


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, safe to log or print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


def default_helo_name() -> str:
    """This host's fully qualified name (`socket.getfqdn()`), or its bare name when it has none;
    `acme notifier` warns at start when the name is not fully qualified."""
    name = socket.getfqdn() or socket.gethostname() or "localhost"
    return name if _HOSTNAME.fullmatch(name) else "localhost"


def default_consumer_name(env: EnvReader) -> str:
    """A name unique per process: the pod name in Kubernetes (HOSTNAME), else the host, plus pid."""
    return f"{env.raw('HOSTNAME') or socket.gethostname()}-{os.getpid()}"


def struct_defaults(cls: type[msgspec.Struct]) -> dict[str, Any]:
    """The declared default of each field of a settings Struct, by field name."""
    return {
        field.name: field.default
        for field in msgspec.structs.fields(cls)
        if field.default is not msgspec.NODEFAULT
    }
