"""Rich views of `acme stats` and `acme trace` (their JSON is the structs themselves)."""

from __future__ import annotations

from rich.console import Group
from rich.table import Table

from acme_cli.admin.render import Output, ago, details, when
from acme_cli.admin.stats import Snapshot
from acme_cli.admin.trace import OrderTrace

__all__ = ["render_trace", "stats_view"]


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds >= 3_600:
        return f"{seconds / 3_600:.1f}h"
    return f"{seconds / 60:.1f}m" if seconds >= 60 else f"{seconds:.1f}s"


def stats_view(s: Snapshot) -> Group:
    """The snapshot as tables (a renderable, so `--watch` can redraw it in place)."""
    streams = Table(title=f"Streams at {when(s.at)}")
    for name in ("stream", "length", "group", "lag", "pending", "oldest pending"):
        streams.add_column(name, justify="left" if name in ("stream", "group") else "right")
    consumers = Table(title="Consumers")
    for name in ("stream", "group", "consumer", "pending", "idle"):
        consumers.add_column(name, justify="right" if name in ("pending", "idle") else "left")
    for stream in s.streams:
        if not stream.groups:
            streams.add_row(stream.stream, f"{stream.length:,}", "(no group)", "-", "-", "-")
        for g in stream.groups:
            lag = f"{'≥' if g.lag_capped else ''}{g.lag:,}"
            pending_age = _age(g.oldest_pending_age_s)
            streams.add_row(
                stream.stream, f"{stream.length:,}", g.name, lag, f"{g.pending:,}", pending_age
            )
            for c in g.consumers:
                idle = _age(c.idle_ms / 1000)
                consumers.add_row(stream.stream, g.name, c.name, f"{c.pending:,}", idle)
    other = Table.grid(padding=(0, 2))
    other.add_column(style="bold")
    other.add_column()
    dead = f"{s.dead.length:,}"
    if s.dead.length:
        dead += f" (newest {ago(s.dead.newest_at, s.at)}, oldest {ago(s.dead.oldest_at, s.at)})"
    o = s.outbox
    other.add_row("dead letters", dead)
    other.add_row("audit records", f"{s.audit_length:,}")
    other.add_row(
        "outbox unpublished", f"{o.unpublished:,} (oldest {_age(o.oldest_unpublished_s)})"
    )
    other.add_row(
        "outbox unconfirmed", f"{o.unconfirmed:,} (oldest {_age(o.oldest_unconfirmed_s)})"
    )
    other.add_row("e-mails sent, last minute", f"{s.sent_last_minute:,}")
    return Group(streams, consumers, other)


def render_trace(out: Output, t: OrderTrace) -> None:
    out.say(f"[bold]Order {t.order_id}[/bold]  status [bold]{t.status}[/bold]")
    out.say(f"e-mail {t.email}   attempts {t.attempts}   trace id {t.trace_id or '-'}")
    steps = Table("at", "+s", "step", "from", "detail")
    steps.columns[4].overflow = "fold"
    for step in t.steps:
        offset = (step.at - t.created_at).total_seconds()
        steps.add_row(when(step.at), f"{offset:.3f}", step.kind, step.source, details(step.detail))
    out.console.print(steps)
    for entry in t.stream_entries:
        where = f" at {entry.consumer}, delivered {entry.deliveries}x" if entry.consumer else ""
        out.say(f"stream entry {entry.stream_id}: {entry.state}{where}")
    if t.outbox is not None:
        published = t.outbox.get("published_at")
        out.say(
            f"outbox: waiting for a receipt (published {t.outbox.get('publish_count', 0)}x,"
            f" first at {when(published)})"
            if published
            else "outbox: not published yet"
        )
    for note in t.notes:
        out.note(f"note: {note}")
