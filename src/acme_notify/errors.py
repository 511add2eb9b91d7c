"""The outcomes of handling one entry, as a small exception set.

`TransientError` leaves the entry pending: the claimer retries it after its backoff.
`ProviderError` (a kind of transient error) says the relay refuses *us*, not this e-mail: the
breaker holds every send back, the try is given back, and the e-mail goes out once the relay
is fixed. `PermanentError` dead-letters it now. Retry policy (how many deliveries, how long
between them) is data in the settings, not code.
"""

from __future__ import annotations

__all__ = ["CircuitOpen", "PermanentError", "PoisonMessage", "ProviderError", "TransientError"]


class TransientError(Exception):
    """Worth retrying later: SMTP 4xx, connection refused, timeouts, TLS hiccups."""

    reason_class = "smtp_transient"

    def __init__(
        self,
        reason: str,
        *,
        server_down: bool = False,
        refund: bool | None = None,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        #: The server itself is unavailable (not just this message): feeds the circuit breaker.
        self.server_down = server_down
        #: The delivery is given back (an outage must not use up an e-mail's retries): by
        #: default when the server is down, the one failure that is certainly not the e-mail's.
        self.refund = server_down if refund is None else refund
        #: The message data had been sent and no answer came (a timeout, a lost connection):
        #: the server may have accepted it. Never tried on another provider at once.
        self.ambiguous = ambiguous
        #: The provider that failed ("" before any was tried).
        self.provider = ""


class ProviderError(TransientError):
    """A permanent refusal that is about us, not the recipient: our HELO name, credentials,
    sender domain, relay access, TLS. Every e-mail would meet it, so none is dead-lettered:
    it counts as the server being unavailable until the relay (or our configuration) is fixed.
    """

    reason_class = "smtp_provider"

    def __init__(self, reason: str, *, refund: bool = True, storm_key: str | None = None) -> None:
        super().__init__(reason, server_down=True, refund=refund)
        #: Set when a storm of one refusal (this key) revealed it: the e-mails dead-lettered
        #: for that refusal before the storm was recognised were the relay's fault too.
        self.storm_key = storm_key


class CircuitOpen(TransientError):
    """Our own breaker held the send back: nothing reached SMTP, so it is no attempt at all (no
    receipt, no failure counted), only a delivery given back."""

    reason_class = "circuit_open"

    def __init__(self) -> None:
        super().__init__("SMTP circuit open: server considered down", server_down=True)


class PermanentError(Exception):
    """Will never succeed as is: SMTP 5xx about this recipient or message, invalid recipient."""

    def __init__(self, reason: str, *, reason_class: str = "smtp_permanent") -> None:
        super().__init__(reason)
        self.reason = reason
        self.reason_class = reason_class
        #: The provider that refused ("" when no provider was asked, e.g. a poison entry).
        self.provider = ""


class PoisonMessage(PermanentError):
    """The stream entry itself is unusable: malformed, unknown schema version, missing fields."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason, reason_class="poison")
