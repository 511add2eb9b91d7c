"""structlog set-up shared by every process, and the masking of personal data in logs.

JSON lines in production (`json`), coloured key=value lines for people (`console`). Whatever is
bound in contextvars (order id, event id, trace id) is merged into every line.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import TextIO, cast

import msgspec
import structlog

from acme_runtime.tracing import add_trace_ids

__all__ = ["configure_logging", "mask_addresses", "mask_email"]


def mask_email(address: str) -> str:
    """`ana.souza@example.com` -> `a***@example.com`: enough to recognise, not to harvest."""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:1]}***@{domain}"


_ADDRESS = re.compile(r"[^\s<>@\"'(),;:\[\]]+@[^\s<>@\"'(),;:\[\]]+")


def mask_addresses(text: str) -> str:
    """Every e-mail address inside `text` (an SMTP server's reply quotes the recipient) masked
    as by `mask_email`."""
    return _ADDRESS.sub(lambda match: mask_email(match.group()), text) if "@" in text else text


class _CurrentStderr:
    """Writes to whatever sys.stderr is at the time (test capture swaps it), not at set-up."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


#: One JSON line per event, in C (msgspec); what JSON cannot hold is written as its repr(), as
#: structlog's own fallback writes it.
_JSON = msgspec.json.Encoder(enc_hook=repr, decimal_format="string")


def _json_line(event: object, **_json_dumps_options: object) -> str:
    return _JSON.encode(event).decode()


def configure_logging(level: str = "info", fmt: str = "json") -> None:
    """Configures structlog and the standard library root logger once per process."""
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_trace_ids,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: structlog.typing.Processor
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        processors.append(structlog.processors.format_exc_info)
        renderer = structlog.processors.JSONRenderer(serializer=_json_line)
    structlog.configure(
        processors=[*processors, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(numeric, logging.WARNING), stream=sys.stderr)
