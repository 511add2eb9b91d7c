"""Reading settings from the environment: typed, once, with one clear line per mistake.

Each service's `Settings.from_env()` uses these readers; nothing here is called at import time.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

__all__ = [
    "EnvReader",
    "SettingsError",
    "default_consumer_name",
    "redact_url",
    "struct_defaults",
]


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
