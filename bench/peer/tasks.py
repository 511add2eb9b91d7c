"""The conventional peer's worker: a Celery app on Redis with one task that renders the same
confirmation e-mail as ours (plain text and HTML alternatives, every item, the total), built the
standard library's way (`EmailMessage`), and sends it with smtplib over one SMTP connection kept
per worker process.

Run from bench/peer/.venv (bench/side_by_side.py does):
``celery --workdir bench/peer -A tasks worker --pool prefork --concurrency 2``
Environment: PEER_REDIS_URL (the broker), PEER_SMTP_HOST, PEER_SMTP_PORT, and optionally
PEER_READY_FILE (touched once the worker consumes: the runner's readiness signal).
"""

from __future__ import annotations

import os
import smtplib
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from html import escape
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_process_shutdown, worker_ready

app = Celery("peer", broker=os.environ.get("PEER_REDIS_URL", "redis://127.0.0.1:6379/0"))
# No result backend: nobody reads the results.
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)

_SMTP_TIMEOUT_S = 10.0
_SUBJECTS = {"pt": "Pedido {order_id} confirmado", "en": "Order {order_id} confirmed"}
_GREETINGS = {
    "pt": ("Olá, {name}!", "Recebemos o seu pedido {order_id}.", "Obrigado pela compra."),
    "en": ("Hello {name},", "We received your order {order_id}.", "Thank you for your order."),
}

#: This worker process's SMTP connection, opened on first use and kept.
_smtp: smtplib.SMTP | None = None


def _connection() -> smtplib.SMTP:
    global _smtp
    if _smtp is None:
        # An explicit local_hostname: the default (socket.getfqdn()) can stall on DNS.
        _smtp = smtplib.SMTP(
            os.environ.get("PEER_SMTP_HOST", "127.0.0.1"),
            int(os.environ.get("PEER_SMTP_PORT", "2525")),
            local_hostname="peer-worker",
            timeout=_SMTP_TIMEOUT_S,
        )
    return _smtp


def _drop_connection() -> None:
    global _smtp
    smtp, _smtp = _smtp, None
    if smtp is not None:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            smtp.close()


def _render(
    order_id: str,
    email: str,
    name: str,
    locale: str,
    total: str,
    currency: str,
    items: list[dict[str, Any]],
) -> EmailMessage:
    language = "pt" if locale.startswith("pt") else "en"
    hello, received, thanks = (
        line.format(name=name, order_id=order_id) for line in _GREETINGS[language]
    )
    lines = [
        f"{item['quantity']} x {item['name']} ({item['sku']}): {currency} {item['unit_price']}"
        for item in items
    ]
    summary = f"Total: {currency} {total}"
    text = "\n".join([hello, "", received, "", *lines, "", summary, "", thanks])
    rows = "".join(
        f"<tr><td>{escape(str(item['quantity']))}</td><td>{escape(item['name'])}</td>"
        f"<td>{escape(currency)} {escape(str(item['unit_price']))}</td></tr>"
        for item in items
    )
    html = (
        f"<html><body><p>{escape(hello)}</p><p>{escape(received)}</p><table>{rows}</table>"
        f"<p>Total: {escape(currency)} {escape(total)}</p><p>{escape(thanks)}</p></body></html>"
    )
    message = EmailMessage()
    message["Subject"] = _SUBJECTS[language].format(order_id=order_id)
    message["From"] = "AcME <pedidos@acme.example>"
    message["To"] = email
    message["Date"] = formatdate()
    message["Message-ID"] = make_msgid(domain="acme.example")  # domain: no getfqdn()
    # The benchmark's sink records this header to match e-mails with orders.
    message["X-Acme-Order-Id"] = order_id
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


@app.task(
    autoretry_for=(smtplib.SMTPException, OSError),
    retry_backoff=True,
    max_retries=5,
)
def send_confirmation(
    order_id: str,
    email: str,
    name: str,
    locale: str,
    total: str,
    currency: str,
    items: list[dict[str, Any]],
) -> None:
    message = _render(order_id, email, name, locale, total, currency, items)
    try:
        _connection().send_message(message)
    except (smtplib.SMTPServerDisconnected, ConnectionError):
        # The kept connection went stale (the server closed it): reconnect once.
        _drop_connection()
        _connection().send_message(message)
    except Exception:
        _drop_connection()
        raise


@worker_ready.connect
def _ready(**_: Any) -> None:
    ready_file = os.environ.get("PEER_READY_FILE")
    if ready_file:
        Path(ready_file).touch()


@worker_process_shutdown.connect
def _shutdown(**_: Any) -> None:
    _drop_connection()
