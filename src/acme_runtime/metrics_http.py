"""Serving a Prometheus registry over HTTP from worker processes (relay, notifier).

The API serves `/metrics` itself; the workers have no web framework, so they use the client's
own small threaded HTTP server.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, start_http_server

__all__ = ["serve_metrics"]


def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> int:
    """Starts the listener (port 0 disables it); returns the port, or 0 when disabled."""
    if port == 0:
        return 0
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)
