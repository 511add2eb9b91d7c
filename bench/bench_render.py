"""Benchmark of the confirmation e-mail renderer: CPU µs per message, per locale.

Renders a 3-item order many times with `acme_notify.render.Renderer` and, for reference, builds
an equivalent message with the standard library's `email.message.EmailMessage`, which the
renderer deliberately avoids. CPU time (`time.process_time`), so other load on the machine
matters less than wall-clock time would.
Run: `.tox/py311/bin/python bench/bench_render.py [renders]`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime
from functools import partial

from acme_notify.envelope import Customer, Envelope, Item, Order
from acme_notify.render import Renderer

DEFAULT_RENDERS = 20_000
WARMUP_RENDERS = 500
STDLIB_RENDERS = 500  # EmailMessage is ~10x slower: fewer rounds give a stable mean
BUDGET_US = 300.0


def _envelope(locale: str) -> Envelope:
    return Envelope(
        event_id="0192f0c8-1111-7aaa-8bbb-0123456789ab",
        type="order.confirmation_requested",
        schema_version=1,
        occurred_at=datetime(2025, 11, 29, 16, 51, tzinfo=UTC),
        order_id="0192f0c8-2222-7ccc-8ddd-abcdef012345",
        payload=Order(
            customer=Customer(
                name="José Ação da Silva", email="jose@example.com.br", locale=locale
            ),
            currency="BRL",
            items=(
                Item("CAM-01", "Camiseta AcME", 2, Decimal("19.90"), Decimal("39.80")),
                Item("CAN-02", "Caneca térmica", 1, Decimal("49.00"), Decimal("49.00")),
                Item("ADS-03", "Adesivos (pacote)", 3, Decimal("5.50"), Decimal("16.50")),
            ),
            total=Decimal("105.30"),
            created_at=datetime(2025, 11, 29, 16, 50, tzinfo=UTC),
        ),
    )


def _cpu_us_per_call(function: Callable[[], object], calls: int) -> float:
    for _ in range(min(calls, WARMUP_RENDERS)):
        function()
    started_s = time.process_time()
    for _ in range(calls):
        function()
    return (time.process_time() - started_s) / calls * 1e6


def _email_message_builder(renderer: Renderer, envelope: Envelope) -> Callable[[], bytes]:
    """Builds the same message with EmailMessage, from the renderer's own subject and bodies."""
    rendered = renderer.render(envelope)
    parsed = message_from_bytes(rendered.data, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    text, html = (part.get_content() for part in parsed.iter_parts())
    subject, to = str(parsed["Subject"]), str(parsed["To"])

    def build() -> bytes:
        message = EmailMessage()
        message["From"] = "AcME Store <pedidos@acme.example>"
        message["To"] = to
        message["Subject"] = subject
        message["Date"] = format_datetime(envelope.occurred_at)
        message["Message-ID"] = rendered.message_id
        message["X-Acme-Order-Id"] = envelope.order_id
        message["X-Acme-Event-Id"] = envelope.event_id
        message.set_content(text, cte="quoted-printable")
        message.add_alternative(html, subtype="html", cte="quoted-printable")
        return message.as_bytes(policy=policy.SMTP)

    return build


def main() -> None:
    renders = int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_RENDERS
    renderer = Renderer("AcME Store <pedidos@acme.example>", "acme.example")
    print(f"renders per locale: {renders:,} (3-item order, CPU time)")
    for locale in ("pt-BR", "en-US"):
        envelope = _envelope(locale)
        size_bytes = len(renderer.render(envelope).data)
        mean_us = _cpu_us_per_call(partial(renderer.render, envelope), renders)
        verdict = "ok" if mean_us <= BUDGET_US else "OVER BUDGET"
        print(
            f"  Renderer.render      {locale}: {mean_us:8.1f} µs/message "
            f"({size_bytes:,} bytes; budget {BUDGET_US:.0f} µs: {verdict})"
        )
    build = _email_message_builder(renderer, _envelope("pt-BR"))
    stdlib_us = _cpu_us_per_call(build, STDLIB_RENDERS)
    print(
        f"  EmailMessage (ref.)  pt-BR: {stdlib_us:8.1f} µs/message "
        "(headers + MIME + serialising only, bodies already rendered)"
    )


if __name__ == "__main__":
    main()
