"""Prometheus metrics: request counts and latency per route, and jobs by status.

Each app has its own registry (several apps may live in one test process); GET /metrics
renders it in the Prometheus text format.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import services
from spartan.store import JobStore


class _JobsCollector(Collector):
    """Reads job counts from the store at scrape time (the store is the source of truth)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("spartan_jobs", "Jobs in the store by status", labels=["status"])
        for status, count in services.count_by_status(self.store).items():
            family.add_metric([status], count)
        yield family


class Metrics:
    """The registry of one app and the metrics in it."""

    def __init__(self, store: JobStore) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "spartan_http_requests",
            "HTTP requests by method, route template and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "spartan_http_request_duration_seconds",
            "HTTP request latency (until the response starts) by method and route template",
            ["method", "route"],
            registry=self.registry,
        )
        self.registry.register(_JobsCollector(store))


class MetricsMiddleware:
    """Counts requests and times them; routes are labelled by template, not by raw path."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def _send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                route = scope.get("route")
                template = getattr(route, "path", None) or "unmatched"
                self.metrics.latency.labels(scope["method"], template).observe(
                    time.perf_counter() - start
                )
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], template, str(status)).inc()
