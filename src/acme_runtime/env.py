"""Reading settings from the environment: typed, once, with one clear line per mistake.

A settings Struct declares each field once, with its variable in the metadata:

    block_ms: Annotated[int, Env("ACME_NOTIFY_BLOCK_MS", "XREADGROUP block time", minimum=10)]

and `load_settings(cls)` walks those fields. `EnvReader` is the same parsing for the few
variables read one at a time (`acme up`, `acme migrate`). Nothing here runs at import time.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import types
from collections.abc import Callable, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Annotated, Any, Final, TypeVar, get_args, get_origin
from urllib.parse import parse_qsl, urlsplit

import msgspec

__all__ = [
    "POSTGRES_SCHEMES",
    "REDIS_CLUSTER_SCHEMES",
    "REDIS_SCHEMES",
    "SMTP_SCHEMES",
    "Env",
    "EnvField",
    "EnvReader",
    "SettingsError",
    "default_consumer_name",
    "default_helo_name",
    "load_settings",
    "redact_url",
    "settings_fields",
]

POSTGRES_SCHEMES: Final = ("postgresql", "postgres")
#: `redis+cluster://` and `rediss+cluster://` name a Redis Cluster by one or more seed nodes.
REDIS_CLUSTER_SCHEMES: Final = ("redis+cluster", "rediss+cluster")
REDIS_SCHEMES: Final = ("redis", "rediss", "unix", *REDIS_CLUSTER_SCHEMES)
SMTP_SCHEMES: Final = ("smtp", "smtps")
#: Schemes whose URL may name no host: a unix socket path, or libpq's `?host=/run/postgresql`
#: (or its default socket, `postgresql:///acme`), all of which asyncpg accepts.
_HOSTLESS_SCHEMES: Final = ("unix", "redis+unix", *POSTGRES_SCHEMES)

#: RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
_HOSTNAME: Final = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
_ADDRESS_LITERAL: Final = re.compile(r"\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9A-Fa-f:.]+)\]")
# `password=` (libpq), and the passphrase of a client key: `sslpassword=` (libpq),
# `ssl_password=` (redis-py).
_PASSWORD_PARAM: Final = re.compile(r"([?&](?:ssl_?)?password=)[^&#]*", re.IGNORECASE)
#: The values each library takes for its TLS mode (asyncpg also spells libpq's `-` as `_`).
_SSLMODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_REDIS_CERT_REQS: Final = ("none", "optional", "required")

S = TypeVar("S", bound=msgspec.Struct)


class SettingsError(ValueError):
    """A configuration variable is missing or malformed; the message names the variable."""


@dataclass(frozen=True, slots=True)
class Env:
    """Where a settings field comes from and what it accepts: the field's one declaration.

    The kind of value follows the field's type (`int`, `float`, `bool`, `str`, or `str | None`
    for a variable that may stay unset); `schemes` makes a `str` a URL, `choices` a keyword,
    `hostname` an EHLO name. Numbers are at least 0 unless `minimum` says otherwise. The unit
    is in the names (`block_ms`, `ACME_NOTIFY_BLOCK_MS`). A field without a default must be
    set; `default_from` computes a default when the settings are loaded, not at import.
    """

    var: str
    doc: str
    _: KW_ONLY
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    schemes: tuple[str, ...] = ()
    hostname: bool = False
    default_from: Callable[[EnvReader], str] | None = None


@dataclass(frozen=True, slots=True)
class EnvField:
    """One field of a settings Struct as the loader sees it."""

    name: str
    env: Env
    #: int, float, bool or str (without the `| None`).
    kind: type
    #: The Struct's declared default (msgspec.NODEFAULT when it has none, or a factory).
    default: Any
    #: The Struct has no default: unless `default_from` gives one, the variable must be set.
    required: bool

    def parse(self, value: str) -> Any:
        """The variable's value, checked and converted; SettingsError names the variable."""
        env, var = self.env, self.env.var
        if env.schemes:
            return _url(var, value, env.schemes)
        if env.choices:
            return _choice(var, value, env.choices)
        if env.hostname:
            return _hostname(var, value)
        if self.kind is bool:
            return _boolean(var, value)
        if self.kind is int:
            return _integer(var, value, int(env.minimum or 0), _int_or_none(env.maximum))
        if self.kind is float:
            return _number(var, value, 0.0 if env.minimum is None else env.minimum, env.maximum)
        return value


@functools.cache
def settings_fields(cls: type[msgspec.Struct]) -> tuple[EnvField, ...]:
    """The fields of a settings Struct with their Env metadata; TypeError on a bad declaration."""
    found = []
    for field in msgspec.structs.fields(cls):
        where = f"{cls.__name__}.{field.name}"
        if get_origin(field.type) is not Annotated:
            raise TypeError(f"{where}: no Env(...) in the annotation")
        base, *extras = get_args(field.type)
        envs = [e for e in extras if isinstance(e, Env)]
        if len(envs) != 1:
            raise TypeError(f"{where}: expected one Env(...) in the annotation")
        env = envs[0]
        members = set(get_args(base)) if isinstance(base, types.UnionType) else {base}
        optional = type(None) in members
        kinds = members - {type(None)}
        problem = _declaration_problem(env, kinds, optional=optional, default=field.default)
        if problem:
            raise TypeError(f"{where}: {problem}")
        found.append(EnvField(field.name, env, kinds.pop(), field.default, field.required))
    return tuple(found)


def load_settings(
    cls: type[S], environ: Mapping[str, str] | None = None, *, unset_hint: str = ""
) -> S:
    """An instance of the settings Struct `cls` read from `environ` (os.environ by default).

    An unset variable leaves its field's default, or asks `default_from`; an unset required
    one is `VAR: not set (unset_hint)`. Checks across fields are the caller's, run after.
    """
    reader = EnvReader(environ)
    values: dict[str, Any] = {}
    for field in settings_fields(cls):
        raw = reader.raw(field.env.var)
        if raw is not None:
            values[field.name] = field.parse(raw)
        elif field.env.default_from is not None:
            values[field.name] = field.env.default_from(reader)
        elif field.required:
            hint = f" ({unset_hint})" if unset_hint else ""
            raise SettingsError(f"{field.env.var}: not set{hint}")
    return cls(**values)


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
        return None if value is None else _url(name, value, schemes)

    def integer(
        self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        value = self.raw(name)
        return default if value is None else _integer(name, value, minimum, maximum)


def _declaration_problem(env: Env, kinds: set[Any], *, optional: bool, default: Any) -> str | None:
    if len(kinds) != 1 or not kinds <= {int, float, bool, str}:
        return "a setting is an int, float, bool or str (or `str | None`)"
    (kind,) = kinds
    if optional and (kind is not str or default is not None):
        return "only `str | None = None` may stay unset"
    is_text = env.schemes or env.choices or env.hostname or env.default_from
    if is_text and kind is not str:
        return "schemes, choices, hostname and default_from apply to str fields"
    if (env.minimum, env.maximum) != (None, None) and kind not in (int, float):
        return "minimum and maximum apply to int and float fields"
    if kind is int and not all(isinstance(b, int | None) for b in (env.minimum, env.maximum)):
        return "an int field's bounds are ints"
    return None


def _int_or_none(value: float | None) -> int | None:
    return None if value is None else int(value)


def _integer(name: str, value: str, minimum: int, maximum: int | None) -> int:
    try:
        parsed = int(value)
    except ValueError:
        raise SettingsError(f"{name}: expected an integer, got {value!r}") from None
    if parsed < minimum or (maximum is not None and parsed > maximum):
        upper = "" if maximum is None else f" and at most {maximum}"
        raise SettingsError(f"{name}: must be at least {minimum}{upper}, got {parsed}")
    return parsed


def _number(name: str, value: str, minimum: float, maximum: float | None) -> float:
    try:
        parsed = float(value)
    except ValueError:
        raise SettingsError(f"{name}: expected a number, got {value!r}") from None
    # NaN compares unequal to itself, and fails every bound.
    if parsed < minimum or parsed != parsed or (maximum is not None and parsed > maximum):
        upper = "" if maximum is None else f" and at most {maximum}"
        raise SettingsError(f"{name}: must be a number of at least {minimum}{upper}, got {value!r}")
    return parsed


def _boolean(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}: expected true/false, got {value!r}")


def _choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    normalised = value.lower()
    if normalised not in choices:
        raise SettingsError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return normalised


def _hostname(name: str, value: str) -> str:
    """A host name as given in SMTP's EHLO: a domain name, or an address literal such as
    `[192.0.2.1]`."""
    if not _HOSTNAME.fullmatch(value) and not _ADDRESS_LITERAL.fullmatch(value):
        raise SettingsError(
            f"{name}: expected a host name such as mail.example.com or an address literal "
            f"such as [192.0.2.1], got {value!r}"
        )
    return value


def _url(name: str, value: str, schemes: tuple[str, ...]) -> str:
    """`value` if its library would take it: the scheme, each host's port, a host unless the
    scheme does without (a unix socket; libpq's `?host=` or default socket)."""
    try:
        parts = urlsplit(value)
    except ValueError as exc:  # an unclosed [IPv6 literal
        raise SettingsError(f"{name}: not a URL ({exc}): {redact_url(value)!r}") from None
    if parts.scheme not in schemes:
        allowed = ", ".join(f"{s}://" for s in schemes)
        raise SettingsError(
            f"{name}: expected a URL starting with {allowed}, got {redact_url(value)!r}"
        )
    hostspec = parts.netloc.rpartition("@")[2]
    # libpq lists several hosts, `h1:5432,h2:5433`, for failover; a cluster, its seed nodes.
    several = (*POSTGRES_SCHEMES, *REDIS_CLUSTER_SCHEMES)
    hosts = hostspec.split(",") if parts.scheme in several else [hostspec]
    for host in hosts:
        try:
            urlsplit(f"//{host}").port  # noqa: B018 - parsing the port is the check
        except ValueError as exc:
            raise SettingsError(f"{name}: bad port in {redact_url(value)!r}: {exc}") from None
    if not parts.hostname and parts.scheme not in _HOSTLESS_SCHEMES:
        raise SettingsError(f"{name}: no host in {redact_url(value)!r}")
    problem = _tls_problem(parts.scheme.removesuffix("+cluster"), parts.query)
    if problem:
        raise SettingsError(f"{name}: {problem}, in {redact_url(value)!r}")
    return value


def _tls_problem(scheme: str, query: str) -> str | None:
    """A TLS option its library would trip over only at the first connection, or not at all:
    redis-py passes `ssl_*` of a `redis://` URL to a plain connection (a TypeError when it
    opens); a mistyped `sslmode` or `ssl_cert_reqs` fails there too. Files named by the URL
    (a CA bundle, a client certificate) are the library's to open: they exist in the pod,
    not necessarily where the settings are read."""
    params = dict(parse_qsl(query, keep_blank_values=True))
    if scheme in ("redis", "unix"):
        stray = sorted(key for key in params if key.startswith("ssl_"))
        if stray:
            return f"{', '.join(stray)} given, but only rediss:// connects over TLS"
    if scheme == "rediss" and params.get("ssl_cert_reqs", "required") not in _REDIS_CERT_REQS:
        return f"ssl_cert_reqs must be one of {', '.join(_REDIS_CERT_REQS)}"
    sslmode = params.get("sslmode", "prefer").replace("_", "-")
    if scheme in POSTGRES_SCHEMES and sslmode not in _SSLMODES:
        return f"sslmode must be one of {', '.join(_SSLMODES)}"
    return None


def redact_url(url: str) -> str:
    """The URL with any password (user info, or a `password=`, `sslpassword=` or `ssl_password=`
    parameter) replaced by ***, safe to log or print; the rest is left as written, several
    hosts included."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:end], _PASSWORD_PARAM.sub(r"\g<1>***", rest[end:])
    userinfo, at, hosts = netloc.rpartition("@")
    user, colon, _password = userinfo.partition(":")
    if at and colon:
        netloc = f"{user}:***@{hosts}"
    return f"{scheme}://{netloc}{tail}"


def default_helo_name(_env: EnvReader | None = None) -> str:
    """This host's fully qualified name (`socket.getfqdn()`), or its bare name when it has none;
    `acme notifier` warns at start when the name is not fully qualified."""
    name = socket.getfqdn() or socket.gethostname() or "localhost"
    return name if _HOSTNAME.fullmatch(name) else "localhost"


def default_consumer_name(env: EnvReader) -> str:
    """A name unique per process: the pod name in Kubernetes (HOSTNAME), else the host, plus pid."""
    return f"{env.raw('HOSTNAME') or socket.gethostname()}-{os.getpid()}"
