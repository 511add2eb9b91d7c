"""The outcomes of handling one entry, as a small exception set.

`TransientError` leaves the entry pending: the claimer retries it after its backoff.
`PermanentError` dead-letters it now. Retry policy (how many deliveries, how long between them)
is data in the settings, not code.
"""

from __future__ import annotations

__all__ = ["PermanentError", "PoisonMessage", "TransientError"]


class TransientError(Exception):
    """Worth retrying later: SMTP 4xx, connection refused, timeouts, TLS hiccups."""

    def __init__(self, reason: str, *, server_down: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        #: The server itself is unavailable (not just this message): feeds the circuit breaker.
        self.server_down = server_down


class PermanentError(Exception):
    """Will never succeed as is: SMTP 5xx (unknown mailbox, bad address), invalid recipient."""

    def __init__(self, reason: str, *, reason_class: str = "smtp_permanent") -> None:
        super().__init__(reason)
        self.reason = reason
        self.reason_class = reason_class


class PoisonMessage(PermanentError):
    """The stream entry itself is unusable: malformed, unknown schema version, missing fields."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, reason_class="poison")
