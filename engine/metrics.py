"""Prometheus metrics of one app, in a registry of its own so several apps can live in one process."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # the *_created series double the output and no dashboard of ours reads them


class Metrics:
    """The counters the request pipeline updates and GET /metrics exposes."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("engine_requests", "Requests answered, by API, method and status code",
                                ["api", "method", "status_code"], registry=self.registry)

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        return generate_latest(self.registry)
